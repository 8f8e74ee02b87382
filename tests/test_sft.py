"""sft.py: the row layout (clean prompt, response, eot, EOS padding), seeded batches, and the loss on it."""

import random

import pytest
import torch
import torch.nn.functional as F

import common
import sft
from diffusion import EPS, diffusion_loss
from tasks_tiny import TINY_TASKS, TinyArith
from tokenizer import Tokenizer


def test_row_is_prompt_response_eot_then_eos_padding():
    tok = Tokenizer.tiny()
    ids, P = sft.encode_example(tok, "2+2?", "<reasoning>2+2=4</reasoning>\n<answer>4</answer>", 64)
    assert len(ids) == 64 and ids[:P] == tok.chat("2+2?")
    answer = tok.encode("<reasoning>2+2=4</reasoning>\n<answer>4</answer>")
    assert ids[P:P + len(answer)] == answer and ids[P + len(answer)] == tok.eot_id
    assert set(ids[P + len(answer) + 1:]) == {tok.eos_id}


def test_too_long_example_is_refused_not_cut():
    tok = Tokenizer.tiny()
    with pytest.raises(ValueError, match="does not fit --seq_len=16"):
        sft.encode_example(tok, "a question", "an answer that is long", 16)


def test_batches_are_seeded_epochs_covering_every_example():
    ids = torch.arange(10)[:, None].repeat(1, 3)
    lengths = torch.arange(10)
    seen = torch.cat([sft.sft_batch(step, 4, ids, lengths, seed=7)[0][:, 0] for step in range(5)])  # 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    again = torch.cat([sft.sft_batch(step, 4, ids, lengths, seed=7)[0][:, 0] for step in range(5)])
    assert torch.equal(seen, again)
    x, P = sft.sft_batch(3, 4, ids, lengths, seed=7)
    assert torch.equal(x[:, 0], P)  # rows and their prompt lengths stay together


def test_collated_batch_never_masks_a_prompt_token_and_scores_the_eos_padding(tiny_model, record_inputs):
    tok = Tokenizer.tiny()
    examples = sft.sft_examples([TINY_TASKS["arith"]], 6, seed=0)
    ids, P = sft.encode_dataset(tok, examples, 96)
    model = tiny_model(tokenizer=True, n_layers=1)
    with record_inputs(model) as seen:
        loss = diffusion_loss(model, ids, P, tok.mask_id, generator=torch.Generator().manual_seed(3))
    [xt] = seen
    is_prompt = torch.arange(96)[None] < P[:, None]
    assert not (xt[is_prompt] == tok.mask_id).any()  # the prompt is never masked
    masked = xt == tok.mask_id
    assert (masked & (ids == tok.eos_id)).any()  # EOS padding is masked and so inside the loss
    # the loss by hand: CE on masked positions / p, summed per row, / answer length, batch mean
    g = torch.Generator().manual_seed(3)
    p = (1 - EPS) * torch.rand(6, 1, generator=g) + EPS
    ce = F.cross_entropy(model(xt).transpose(1, 2), ids, reduction="none")
    expected = ((ce * masked / p).sum(1) / (96 - P).float()).mean()
    torch.testing.assert_close(loss, expected)


def test_sft_examples_use_each_tasks_traces():
    examples = sft.sft_examples(list(TINY_TASKS.values()), 5, seed=1)
    assert len(examples) == 15
    for (question, response), task in zip(examples, [t for t in TINY_TASKS.values() for _ in range(5)]):
        ex = next(e for e in task.examples("train", 5) if e.prompt == question)
        assert task.correct(response, ex) == 1.0 and task.format_ok(response)
    assert examples == sft.sft_examples(list(TINY_TASKS.values()), 5, seed=1)


def test_arith_restate_false_writes_each_arith_result_once_and_leaves_the_other_tasks():
    restated = sft.sft_examples(sft.sft_tasks(sft.SFTConfig(arith_restate=True)), 20, seed=0)
    once = sft.sft_examples(sft.sft_tasks(sft.SFTConfig(arith_restate=False)), 20, seed=0)
    assert restated[:40] == once[:40]  # Countdown and Sudoku unchanged
    for (question, old), (same_question, new) in zip(restated[40:], once[40:]):
        assert question == same_question and old != new and len(new) < len(old)
        old_lines, new_lines = old.split("\n"), new.split("\n")
        # "3+4=7\n7-2=5" -> "3+4=7\n-2=5": each line after the first loses the result it restated
        for old_line, new_line in zip(old_lines[1:-1], new_lines[1:-1]):
            assert old_line.endswith(new_line) and new_line[0] in "+-"
    assert [t.name for t in sft.sft_tasks(sft.SFTConfig(tasks="arith", arith_restate=False))] == ["arith"]


def test_backtrack_share_sets_how_many_traces_try_check_and_retry():
    tasks = list(TINY_TASKS.values())
    def retries(examples):  # traces with a line marked " no": a wrong try, then the right one
        return sum(any(line.endswith(" no") for line in response.split("\n")) for _, response in examples)
    assert sft.sft_examples(tasks, 40, seed=2) == sft.sft_examples(tasks, 40, seed=2, backtrack=0.0)
    assert retries(sft.sft_examples(tasks, 40, seed=2)) == 0  # the default: clean traces
    assert 0.15 * 120 < retries(sft.sft_examples(tasks, 40, seed=2, backtrack=0.3)) < 0.45 * 120
    arith = sft.sft_examples([TINY_TASKS["arith"]], 40, seed=2, backtrack=1.0)
    assert retries(arith) == 40  # every Arith trace can slip and undo a step
    for task in tasks:  # clean traces still solve their questions
        for (question, response), ex in zip(sft.sft_examples([task], 40, seed=2, backtrack=0.0),
                                            task.examples("train", 40)):
            assert question == task.rl_prompt(ex) and task.correct(response, ex) == 1.0 and task.format_ok(response)


def test_trace_drills_cut_each_drill_row_at_a_step_and_mask_the_rest():
    """--trace_drills: the last rows of a batch are cut right after a step end (or at the response's
    start), clean before the cut, masked from it to the row's end; the other rows are untouched;
    over many draws every step of a trace is a cut."""
    tok = Tokenizer.tiny()
    response = "<reasoning>5-2=3\n3+6=9</reasoning>\n<answer>9</answer>"
    ids, P = sft.encode_example(tok, "Ivy has 5 keys, sells 2, finds 6. How many?", response, 64)
    x0, lengths = torch.tensor([ids, ids, ids]), torch.tensor([P, P, P])
    step_ends = sft.step_end_tokens(tok)
    cut_texts = set()
    for seed in range(200):
        answers = sft.trace_drills(x0, lengths, step_ends, tok.eot_id, 2, torch.Generator().manual_seed(seed))
        assert not answers[0].any()  # the first row is not a drill
        for row in answers[1:]:
            cut = int(row.int().argmax())
            assert row[cut:].all() and not row[:cut].any()  # clean before the cut, masked after it
            before = tok.decode(ids[P:cut])
            assert cut == P or before.endswith(sft.STEP_ENDS)
            cut_texts.add(before)
    assert cut_texts == {"", "<reasoning>", "<reasoning>5-2=", "<reasoning>5-2=3\n", "<reasoning>5-2=3\n3+6=",
                         "<reasoning>5-2=3\n3+6=9</reasoning>\n", "<reasoning>5-2=3\n3+6=9</reasoning>\n<answer>",
                         response}  # the last: cut after "</answer>", only the end of turn to write


def test_drill_shares_are_checked():
    with pytest.raises(common.ConfigError, match="trace_drills"):
        sft.SFTConfig(trace_drills=1.5)
    with pytest.raises(common.ConfigError, match="drill_share=1"):
        sft.SFTConfig(drill_share=1.0)  # no row left for the SFT examples


def test_a_step_batch_has_sft_rows_then_trace_drills_then_fact_drills():
    """sft_step_batch: B rows = SFT rows (the last --trace_drills share of them cut at a step), then
    --drill_share of the batch in packed arithmetic drills with prompt length 0; seeded by step."""
    tok = Tokenizer.tiny()
    ids, P = sft.encode_dataset(tok, sft.sft_examples(list(TINY_TASKS.values()), 4, seed=0), 128)
    cfg = sft.SFTConfig(batch_size=8, trace_drills=0.5, drill_share=0.25)
    x0, lengths, answers = sft.sft_step_batch(3, cfg, tok, ids, P, sft.step_end_tokens(tok))
    assert x0.shape == answers.shape == (8, 128) and lengths.shape == (8,)
    assert not answers[:3].any() and answers[3:].any(dim=1).all()  # 6 SFT rows, 3 of them cut; 2 fact rows
    assert torch.equal(x0[:6], sft.sft_batch(3, 6, ids, P, cfg.seed)[0])
    assert (lengths[6:] == 0).all() and "=" in tok.decode(x0[6].tolist())
    again = sft.sft_step_batch(3, cfg, tok, ids, P, sft.step_end_tokens(tok))
    assert all(torch.equal(a, b) for a, b in zip((x0, lengths, answers), again))
    plain = sft.sft_step_batch(3, sft.SFTConfig(batch_size=8, trace_drills=0, drill_share=0), tok, ids, P)
    assert plain[2] is None and torch.equal(plain[0], sft.sft_batch(3, 8, ids, P, cfg.seed)[0])



def test_the_default_recipe_drills_and_writes_arith_once_and_the_d1_preset_trains_on_s1k_alone():
    """The defaults are the shipped tiny-sft.pt's recipe (README, "Moving the table", items 24-25): a
    default batch of 16 holds 12 SFT rows, 3 of them cut at a step, then 4 rows of fact drills; Arith's
    traces write each result once. --preset=d1 turns both drills off."""
    cfg = sft.SFTConfig()
    tok = Tokenizer.tiny()
    examples = sft.sft_examples(sft.sft_tasks(cfg), 4, seed=0)
    ids, P = sft.encode_dataset(tok, examples, cfg.seq_len)
    x0, lengths, answers = sft.sft_step_batch(0, cfg, tok, ids, P, sft.step_end_tokens(tok))
    assert x0.shape[0] == 16 and (lengths[12:] == 0).all() and (lengths[:12] > 0).all()
    assert not answers[:9].any() and answers[9:].any(dim=1).all()  # 9 plain SFT rows, 3 cut, 4 drill rows
    for question, response in examples[-4:]:  # Arith's: "5-2=3\n+6=9", no line restates the result above
        later_lines = response.split("</reasoning>")[0].split("\n")[1:]
        assert later_lines and all(line[0] in "+-" for line in later_lines)
    d1 = common.apply_preset(sft.SFTConfig, {"preset": "d1"})  # the keys --preset=d1 fills in
    assert d1["trace_drills"] == 0 and d1["drill_share"] == 0


# Arith with the pretraining corpus's traces, each line starting with the result above it: every step
# reads "a+b=", as ArithOracle needs, and each result has copies for the "copies" view to hide.
RESTATED_ARITH = TinyArith(restate=True)


class ArithOracle(torch.nn.Module):
    """A stand-in model that reads "a+b=" or "a-b=" just before each position and puts all its
    weight on the right digit there if it and the rest of the row are masked (else on EOS): right
    exactly where a row shows a step's question in full and hides what follows; off by one with `slip`;
    with anywhere=True it computes wherever the result is masked, whatever follows is in view."""

    def __init__(self, tok, slip=0, anywhere=False):
        super().__init__()
        self.tok, self.slip, self.anywhere = tok, slip, anywhere
        self.digit = {tok.encode(str(d))[0]: d for d in range(10)}
        self.op = {tok.encode(o)[0]: o for o in "+-"}

    def forward(self, x):  # (B, T) -> (B, T, V)
        logits = torch.zeros(*x.shape, self.tok.n_vocab)
        logits[..., self.tok.eos_id] = 1.0
        eq = self.tok.encode("=")[0]
        for r, j in (x[:, :-1] == eq).nonzero().tolist():
            a, op, b = (x[r, j - k].item() for k in (3, 2, 1))
            hidden = (x[r, j + 1:] == self.tok.mask_id).all()  # the result and all after it masked
            hidden = hidden or (self.anywhere and x[r, j + 1] == self.tok.mask_id)
            if a in self.digit and op in self.op and b in self.digit and hidden:
                value = self.digit[a] + self.digit[b] if self.op[op] == "+" else self.digit[a] - self.digit[b]
                logits[r, j + 1, self.tok.encode(str((value + self.slip) % 10))[0]] = 2.0
        return logits


def test_step_accuracy_reads_each_result_with_the_steps_before_it_in_view():
    tok = Tokenizer.tiny()
    arith, sudoku = RESTATED_ARITH, TINY_TASKS["sudoku"]
    assert sft.step_accuracy(ArithOracle(tok), tok, arith, torch.device("cpu"), "float32", n=20) == 1.0
    assert sft.step_accuracy(ArithOracle(tok, slip=1), tok, arith, torch.device("cpu"), "float32", n=20) == 0.0
    assert sft.step_accuracy(ArithOracle(tok), tok, sudoku, torch.device("cpu"), "float32", n=5) is None


def test_step_probe_copies_view_hides_the_result_where_the_trace_writes_it_again():
    tok = Tokenizer.tiny()
    arith = RESTATED_ARITH
    ex = next(e for e in arith.examples("test", 50) if len(e.steps) == 3)
    ids, P = sft.encode_example(tok, arith.rl_prompt(ex), arith.sft_response(ex, random.Random(0), 0.0), 160)
    results = [j for j in range(P + 1, len(ids)) if tok.decode([ids[j - 1]]).endswith("=")]
    (a, op1, b1, r1), (_, op2, b2, r2), (_, op3, b3, r3) = arith._lines(ex)
    M = tok.decode([tok.mask_id])

    def shown(j, view):  # the response part of the probe row, masks as M
        return tok.decode(sft.step_probe_row(tok, ids, j, view)[P:]).split("<|eot_id|>")[0]

    answer = f"<answer>{r3}</answer>"
    assert [shown(j, "copies") for j in results] == [
        f"<reasoning>{a}{op1}{b1}={M}\n{M}{op2}{b2}={r2}\n{r2}{op3}{b3}={r3}</reasoning>\n{answer}",
        f"<reasoning>{a}{op1}{b1}={r1}\n{r1}{op2}{b2}={M}\n{M}{op3}{b3}={r3}</reasoning>\n{answer}",
        f"<reasoning>{a}{op1}{b1}={r1}\n{r1}{op2}{b2}={r2}\n{r2}{op3}{b3}={M}</reasoning>\n<answer>{M}</answer>"]
    assert shown(results[1], "result") == (f"<reasoning>{a}{op1}{b1}={r1}\n{r1}{op2}{b2}={M}\n{r2}{op3}{b3}={r3}"
                                           f"</reasoning>\n{answer}")
    before = sft.step_probe_row(tok, ids, results[0], "before")
    assert before[:results[0]] == ids[:results[0]] and set(before[results[0]:]) == {tok.mask_id}


def test_step_accuracy_copies_view_tells_a_model_that_computes_from_one_that_needs_the_rest_hidden():
    tok = Tokenizer.tiny()
    arith, cpu = RESTATED_ARITH, torch.device("cpu")
    for view in sft.STEP_VIEWS:
        assert sft.step_accuracy(ArithOracle(tok, anywhere=True), tok, arith, cpu, "float32", n=20, view=view) == 1.0
    for view in ("result", "copies"):
        assert sft.step_accuracy(ArithOracle(tok), tok, arith, cpu, "float32", n=20, view=view) == 0.0
    with pytest.raises(ValueError, match="view"):
        sft.step_accuracy(ArithOracle(tok), tok, arith, cpu, "float32", n=2, view="after")
