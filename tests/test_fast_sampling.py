"""The fast samplers (Fast-dLLM: KV cache and threshold decoding, diffusion.generate): a cache refreshed
every step is the reference sampler exactly; the cache records a fresh forward's keys and values; a
cached forward reads them; threshold decoding keeps the sampler's invariants; early stop returns the
reference's answers up to their ends; bad options are refused; evaluation and GRPO report the steps taken."""
import json

import pytest
import torch
import torch.nn as nn

import eval as evaluation
import train
from checkpoint import load_model
from diffusion import every_answer_ended, generate
from eval import complete, stops_cleanly
from model import Config, KVCache, apply_rope, rope_tables
from tasks_tiny import TINY_TASKS
from tokenizer import Tokenizer

MASK = 60  # the small model's [MASK] id (tests/conftest.py, SMALL)
PADDING = {"none": None, "left": torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]])}


def prompt_and_mask(padding, seed=0):
    """Three prompts of 7 tokens, left-padded (with PAD rows of the attention mask) or not."""
    prompt = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(seed))
    return prompt, PADDING[padding]


def record_steps(model, prompt, **kw):
    """generate() and the state after each of its steps."""
    states = []
    out = generate(model, prompt, on_step=lambda x, step: states.append(x.clone()), **kw)
    return out, states


# -- a cache refreshed every step is the reference; the cache holds a fresh forward's K, V -------


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_cache_refreshed_every_step_is_the_reference_sampler(impl, padding, cache, tiny_model):
    model = tiny_model(seed=1, attn_impl=impl)
    prompt, attention_mask = prompt_and_mask(padding)
    for kw in (dict(), dict(temperature=1.0), dict(remasking="random", temperature=0.5)):
        kw = dict(steps=12, gen_length=24, block_length=8, attention_mask=attention_mask, **kw)
        reference = generate(model, prompt, generator=torch.Generator().manual_seed(0), **kw)
        cached = generate(model, prompt, generator=torch.Generator().manual_seed(0), cache=cache, refresh_every=1, **kw)
        assert torch.equal(cached, reference), kw


def fresh_keys_and_values(model, x, attention_mask):
    """Every layer's K and V (B, H, T, Dh) after RoPE, from a plain forward (hooks on k_proj, v_proj)."""
    outputs, handles = {}, []
    for i, block in enumerate(model.transformer.blocks):
        for name in ("k_proj", "v_proj"):
            handles.append(getattr(block, name).register_forward_hook(
                lambda module, args, out, key=(i, name): outputs.__setitem__(key, out)))
    model(x, attention_mask)
    for handle in handles:
        handle.remove()
    B, T = x.shape
    cos, sin = rope_tables(T, model.config.head_dim, model.config.rope_theta, x.device)
    def heads(i, name):  # (B, T, D) -> (B, H, T, Dh)
        return outputs[i, name].view(B, T, model.config.n_heads, -1).transpose(1, 2)

    return [(apply_rope(heads(i, "k_proj"), cos, sin), heads(i, "v_proj")) for i in range(model.config.n_layers)]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_the_cache_holds_a_fresh_forwards_keys_and_values_at_each_refresh(cache, tiny_model):
    """Filled once per block (3 blocks), at the block's first step; the other steps run the block (dual)
    or the block and all right of it (prefix), with their keys and values from the cache."""
    model = tiny_model(seed=3)
    prompt, attention_mask = prompt_and_mask("left")
    calls = []

    def check(module, args, kwargs, logits):
        kv_cache = kwargs.get("kv_cache")
        if kv_cache is None:
            return  # the plain forward below
        calls.append((kv_cache.mode, args[0].size(1)))
        if kv_cache.mode == "fill":
            x, mask = args
            for i, (k, v) in enumerate(fresh_keys_and_values(model, x, mask)):
                torch.testing.assert_close(kv_cache.keys[i], k, rtol=0, atol=0)
                torch.testing.assert_close(kv_cache.values[i], v, rtol=0, atol=0)

    handle = model.register_forward_hook(check, with_kwargs=True)
    generate(model, prompt, steps=12, gen_length=24, block_length=8, attention_mask=attention_mask, cache=cache)
    handle.remove()
    T = 7 + 24
    run = [8, 8, 8] if cache == "dual" else [T - 7, T - 15, T - 23]  # positions a cached step runs, per block
    expected = [step for block in range(3) for step in [("fill", T)] + [("use", run[block])] * 3]
    assert calls == expected


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_a_cached_forward_reads_the_cache_and_runs_only_its_positions(impl, tiny_model):
    """Nothing changed since the fill: the positions lo..hi-1 get the full forward's logits. A one-layer
    model's keys and values depend on their own token only, so then even a changed span is exact."""
    prompt, attention_mask = prompt_and_mask("left")
    x = torch.cat([prompt, torch.randint(0, 50, (3, 9))], dim=1)  # (3, 16)
    mask = torch.cat([attention_mask, torch.ones(3, 9, dtype=torch.long)], dim=1)
    model, cache = tiny_model(seed=5, attn_impl=impl), KVCache()
    with torch.no_grad():
        full = model(x, mask, kv_cache=cache.fill())
        torch.testing.assert_close(full, model(x, mask))
        for lo, hi in ((7, 11), (7, 16), (0, 16)):
            part = model(x[:, lo:hi], mask, kv_cache=cache.use(lo, hi))  # (3, hi - lo, V)
            torch.testing.assert_close(part, full[:, lo:hi], rtol=1e-5, atol=1e-5)
        one_layer, cache = tiny_model(seed=5, attn_impl=impl, n_layers=1), KVCache()
        one_layer(x, mask, kv_cache=cache.fill())
        changed = x.clone()
        changed[:, 7:11] = MASK
        part = one_layer(changed[:, 7:11], mask, kv_cache=cache.use(7, 11))
        torch.testing.assert_close(part, one_layer(changed, mask)[:, 7:11], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"KVCache.use\(7, 11\) runs 4 positions; got 3"):
            model(x[:, 7:10], mask, kv_cache=cache.use(7, 11))
    with pytest.raises(RuntimeError, match="before any fill"):
        KVCache().use(0, 4)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_with_one_layer_the_block_cache_is_exact(cache, tiny_model):
    """The cache is approximate only because keys and values see the other tokens through earlier layers."""
    model = tiny_model(seed=2, n_layers=1)
    prompt, attention_mask = prompt_and_mask("left")
    kw = dict(steps=12, gen_length=24, block_length=8, attention_mask=attention_mask)
    assert torch.equal(generate(model, prompt, cache=cache, **kw), generate(model, prompt, **kw))


# -- threshold decoding --------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_threshold_decoding_keeps_the_samplers_invariants(cache, tiny_model):
    model = tiny_model(seed=0, init_std=0.3)  # larger weights: probabilities from 0.08 to 0.7
    prompt, attention_mask = prompt_and_mask("left")
    out, states = record_steps(model, prompt, steps=12, gen_length=24, block_length=8, attention_mask=attention_mask,
                               cache=cache, threshold=0.3)
    assert not (out[:, 7:] == MASK).any() and torch.equal(out[:, :7], prompt)
    previous, counts = torch.cat([prompt, torch.full((3, 24), MASK)], 1), []
    for x in states:
        block = (previous[:, 7:] == MASK).any(0).nonzero()[0].item() // 8  # the first block with a mask left
        lo, hi = 7 + 8 * block, 7 + 8 * (block + 1)
        newly = (previous == MASK) & (x != MASK)  # (3, 31)
        assert not newly[:, hi:].any() and not newly[:, :lo].any()  # only inside the current block
        assert ((previous != MASK) <= (x == previous)).all()  # committed tokens are never re-masked
        unfinished = (previous[:, lo:hi] == MASK).any(1)
        assert (newly.sum(1)[unfinished] >= 1).all()  # at least one per step in every unfinished row
        counts += newly.sum(1)[unfinished].tolist()
        previous = x
    assert max(counts) > 1 and len(states) < 24  # some steps commit several tokens


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_a_threshold_nothing_clears_is_one_token_per_step(cache, tiny_model):
    """The rule is "probability > threshold", so at 1.0 nothing clears it: one token per step."""
    model = tiny_model(seed=4)
    prompt, attention_mask = prompt_and_mask("left")
    kw = dict(gen_length=24, block_length=8, attention_mask=attention_mask, cache=cache)
    out, states = record_steps(model, prompt, steps=12, threshold=1.0, **kw)
    assert torch.equal(out, generate(model, prompt, steps=24, **kw)) and len(states) == 24


class Sure(nn.Module):
    """A "model" certain of token 5 at every position it runs (probability 1.0 in fp32)."""

    def __init__(self):
        super().__init__()
        self.config = Config(**{"vocab_size": 64, "embedding_size": 64, "mask_token_id": MASK})

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        logits = torch.zeros(*input_ids.shape, 64)
        logits[..., 5] = 100.0
        return logits


def test_an_easy_stretch_takes_one_step_per_block():
    prompt = torch.zeros(2, 3, dtype=torch.long)
    out, states = record_steps(Sure(), prompt, steps=24, gen_length=24, block_length=8, threshold=0.9)
    assert len(states) == 3 and (out[:, 3:] == 5).all()
    assert len(record_steps(Sure(), prompt, steps=24, gen_length=24, block_length=8, threshold=1.0)[1]) == 24


# -- early stop: the reference's answers up to their first stop, in fewer steps ----------------


def test_every_answer_ended_needs_a_stop_with_nothing_masked_before_it():
    S, M = 7, MASK
    assert every_answer_ended(torch.tensor([[1, S, M], [S, M, M]]), (S,), M)
    assert not every_answer_ended(torch.tensor([[1, S, M], [M, S, 2]]), (S,), M)  # row 1: a [MASK] before its stop
    assert not every_answer_ended(torch.tensor([[1, S, M], [1, 2, M]]), (S,), M)  # row 1: no stop yet
    assert every_answer_ended(torch.tensor([[1, 8, M], [S, 2, 3]]), (S, 8), M)  # any of the stop ids


@pytest.mark.parametrize("cache, threshold", [(None, None), ("dual", None), (None, 0.5)])
def test_early_stop_returns_the_references_answers_up_to_their_first_stop(cache, threshold, tiny_model):
    model = tiny_model()
    prompt, attention_mask = prompt_and_mask("left")
    kw = dict(steps=12, gen_length=24, block_length=8, attention_mask=attention_mask, cache=cache, threshold=threshold)
    reference, states = record_steps(model, prompt, **kw)
    stop_ids = tuple(set(reference[:, 7 + 2].tolist()))  # "stops": the tokens the rows wrote at answer position 2
    out, early = record_steps(model, prompt, stop_ids=stop_ids, **kw)
    # it stops at the first step of the reference after which every row has ended
    first = next(i for i, x in enumerate(states) if every_answer_ended(x[:, 7:], stop_ids, MASK))
    assert len(early) == first + 1 < len(states)
    assert torch.equal(out, states[first])
    for row, answer in zip(out[:, 7:], reference[:, 7:]):
        end = next(i for i, t in enumerate(answer.tolist()) if t in stop_ids)  # the row's first stop
        assert torch.equal(row[:end + 1], answer[:end + 1])  # the reference's answer up to and with its stop


def first_stop_in_block_0_of_row_0_only(answers, block_length):
    """A token that row 0 writes in its first block and no other row writes in theirs: with it as the
    stop, row 0 ends in block 0 and the others run on (the test's model is chosen so that one exists)."""
    others = set(answers[1:, :block_length].flatten().tolist())
    return next(t for t in answers[0, :block_length].tolist() if t not in others)


@pytest.mark.parametrize("cache", [None, "dual"])
@pytest.mark.parametrize("sampling", ["greedy", "per-row generators"])
def test_early_stop_retires_ended_rows_and_keeps_every_rows_answer_up_to_its_stop(cache, sampling, tiny_model,
                                                                                 record_inputs):
    """A row that has ended is not run in the later blocks (the model sees fewer rows), and every row's
    answer up to its first stop is the reference's; with temperature, when each row has its own
    generator (GRPO's rollouts), as without."""
    model = tiny_model(seed=2)  # a model whose rows 1 and 2 write none of some token row 0 writes in block 0
    prompt, attention_mask = prompt_and_mask("left")
    kw = dict(steps=12, gen_length=24, block_length=8, attention_mask=attention_mask, cache=cache)
    if sampling == "per-row generators":
        kw.update(temperature=0.9, remasking="random")

    def run(**more):
        generators = [torch.Generator().manual_seed(seed) for seed in (1, 2, 3)]
        extra = {"generator": generators} if sampling == "per-row generators" else {}
        with record_inputs(model) as seen:
            out = generate(model, prompt, **kw, **extra, **more)
        return out, seen

    reference, _ = run()
    stop = first_stop_in_block_0_of_row_0_only(reference[:, 7:], 8)
    out, seen = run(stop_ids=(stop,))
    rows_run = [x.size(0) for x in seen]  # one forward per step, 4 steps per block
    assert rows_run[:4] == [3] * 4 and rows_run[4] == 2 and max(rows_run[4:]) == 2  # row 0 retired after block 0
    for row, answer in zip(out[:, 7:], reference[:, 7:]):
        stops = [i for i, t in enumerate(answer.tolist()) if t == stop]
        end = stops[0] + 1 if stops else len(answer)
        assert torch.equal(row[:end], answer[:end])  # the reference's answer up to and with its stop
    assert (out[0, 7 + 8:] == MASK).all()  # row 0's later blocks were never generated


def test_eval_with_early_stop_scores_the_same_in_fewer_steps():
    model, tok = load_model(evaluation.HERE / "checkpoints" / "tiny-sft.pt", device="cpu")[0], Tokenizer.tiny()
    task = TINY_TASKS["arith"]
    items = [(task, ex) for ex in task.examples("test", 4)]
    every_step, early = (complete(model, tok, items, gen_length=64, stop_ids=evaluation.eval_stop_ids(tok, on))
                         for on in (False, True))
    assert early.texts == every_step.texts and torch.equal(early.correct, every_step.correct)
    assert torch.equal(early.well_formed, every_step.well_formed) and early.well_formed.all()
    assert every_step.steps == 32 and early.steps <= 16  # its short traces end in the first block of 32
    assert (early.completion_ids == tok.mask_id).any()  # the positions never reached stay [MASK]
    E, T, M = tok.eos_id, tok.eot_id, tok.mask_id
    assert stops_cleanly(tok, [5, T, E, M, M]) and not stops_cleanly(tok, [5, M, 6])


# -- options: refused when bad; the default path; steps reported ---------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(cache="x"), "--cache='x': expected one of None, prefix, dual"),
    (dict(threshold=0.0), r"--threshold=0.0: must be more than 0 and at most 1"),
    (dict(threshold=1.5), r"--threshold=1.5: must be more than 0 and at most 1"),
    (dict(threshold=-0.2), r"--threshold=-0.2: must be more than 0 and at most 1"),
    (dict(refresh_every=2), "refresh_every=2: must be at least 1, with a cache"),
    (dict(cache="dual", refresh_every=0), "refresh_every=0: must be at least 1"),
])
def test_bad_options_are_refused_naming_the_key(options, message, tiny_model):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model(), torch.zeros(1, 3, dtype=torch.long), steps=8, gen_length=8, block_length=8, **options)


def test_the_command_lines_refuse_bad_options(tiny_checkpoint, user_error):
    ckpt = tiny_checkpoint()
    assert user_error(evaluation.main, [f"--ckpt={ckpt}", "--cache=x"], "eval.py").startswith("--cache='x'")
    assert user_error(train.main, ["--stage", "grpo", f"--init={ckpt}", "--threshold=2"],
                      "train.py").startswith("--threshold=2.0: must be more than 0 and at most 1")
    assert user_error(train.main, ["--stage", "grpo", "--threshold=high"],
                      "train.py") == "--threshold='high': expected a number or none"


def test_complete_and_eval_report_the_steps_taken(tiny_model, tiny_checkpoint, capsys):
    model, tok, task = tiny_model(tokenizer=True), Tokenizer.tiny(), TINY_TASKS["arith"]
    items = [(task, ex) for ex in task.examples("test", 3)]
    assert complete(model, tok, items, gen_length=32).steps == 16  # d1's protocol: gen_length / 2
    assert complete(model, tok, items, gen_length=32, cache="dual", threshold=1.0).steps == 32  # one per step
    evaluation.main([f"--ckpt={tiny_checkpoint()}", "--tasks=arith", "--gen_length=32", "--n=2", "--dtype=float32",
                     "--cache=prefix", "--threshold=1"])
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("arith gen_length=32: accuracy=") and line.endswith(" n=2 steps=32.0")


def test_grpo_logs_the_rollout_steps(tiny_checkpoint, tmp_path, capsys):
    args = {"init": tiny_checkpoint(n_layers=1), "out_dir": tmp_path, "steps": 1, "questions_per_step": 2,
            "group_size": 3, "gen_length": 32, "diffusion_steps": 8, "mu": 1, "sample_every": 0, "dtype": "float32",
            "cache": "dual", "threshold": 1.0}
    train.main(["--stage", "grpo"] + [f"--{key}={value}" for key, value in args.items()])
    [row] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["rollout_steps"] == 32  # nothing clears a threshold of 1: one token per step
    assert "| steps 32" in capsys.readouterr().out
