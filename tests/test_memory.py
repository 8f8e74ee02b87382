"""memory.py: the memory plan of a run. Its parameter counts against real models, LLaDA-8B's numbers
by hand, the activation formula against the tensors autograd really saves, the rollout's and the
loss's logits against the peak memory of a CPU process, the refusal, and its command line (train.py
--plan=MODEL); and bench.py --fullscale run small on CPU."""
import functools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import memory
from lora import add_lora
from memory import GB, MemoryPlanError, activation_bytes, check_fits, memory_plan, what_fits
from model import Config, Model

ROOT = Path(__file__).resolve().parent.parent
LLADA = Config.preset("llada-8b")
RL_TARGETS = "q_proj,k_proj,v_proj,up_proj"  # d1's RL LoRA targets; its SFT ones are q_proj,k_proj,v_proj


def grpo_cfg(**overrides):
    """A GRPO stage config with d1's full-scale sizes (grpo.py's d1 preset, written out here)."""
    return SimpleNamespace(**{**dict(lora_r=128, lora_targets=RL_TARGETS, lora_dropout=0.05, checkpointing=True,
                                     dtype="bfloat16", questions_per_step=16, group_size=6, gen_length=256,
                                     max_prompt_length=200, mu=12, rollout_batch=6, logp_chunk=6, temperature=0.9,
                                     remasking="low_confidence"), **overrides})


def sft_cfg(**overrides):
    """An SFT stage config with d1's full-scale sizes (sft.py's d1 preset: one 4,096-token row at a time)."""
    return SimpleNamespace(**{**dict(lora_r=128, lora_targets="q_proj,k_proj,v_proj", lora_dropout=0.05,
                                     checkpointing=True, dtype="bfloat16", batch_size=8, micro_batch=1,
                                     seq_len=4096), **overrides})


# -----------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_and_lora_counts_equal_a_real_models(tiny_model, dtype):
    model = tiny_model().to(dtype)
    config = model.config
    full = memory_plan(config, "sft", sft_cfg(lora_r=0), weights_dtype=dtype)
    assert full.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    # full fine-tuning: a gradient and AdamW's two states per parameter, in the parameter's dtype
    assert full.optimizer == 3 * full.weights

    add_lora(model, targets=RL_TARGETS.split(","), r=4)
    adapters = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in adapters)  # LoRA adapters are fp32 on any base
    lora = memory_plan(config, "grpo", grpo_cfg(lora_r=4), weights_dtype=dtype)
    assert lora.weights == full.weights  # the base weights are counted once, at their dtype
    assert lora.optimizer == sum(p.numel() for p in adapters) * (4 + 4 + 8)  # fp32 adapter, grad, 2 states
    assert lora.reference == 0  # LoRA's reference is the same weights with the adapters off
    assert memory_plan(config, "grpo", grpo_cfg(lora_r=0), weights_dtype=dtype).reference == full.weights


def test_llada_8b_weights_and_d1_lora_by_hand():
    plan = memory_plan(LLADA, "grpo", grpo_cfg(), weights_dtype=torch.bfloat16)
    assert plan.weights == 8_015_581_184 * 2 and f"{plan.weights / GB:.2f}" == "16.03"  # LLaDA-8B-Instruct's release: 8,015,581,184
    # d1's RL LoRA, r = 128 on q, k, v, up of 32 blocks (d1 paper: LoRA r 128 on these layers; about 168M):
    #   q, k, v: 3 x 128 x (4096 + 4096) = 3,145,728 per block;  up: 128 x (4096 + 12288) = 2,097,152
    #   (3,145,728 + 2,097,152) x 32 = 167,772,160 parameters; x 16 bytes (fp32 adapter, grad, 2 states) = 2.68 GB
    assert memory.param_counts(LLADA, 128, RL_TARGETS.split(","))[1] == 167_772_160
    assert plan.optimizer == 167_772_160 * 16
    # d1's SFT LoRA on q, k, v only: 3,145,728 x 32 = 100,663,296
    assert memory_plan(LLADA, "sft", sft_cfg(), weights_dtype=torch.bfloat16).optimizer == 100_663_296 * 16


def test_the_weights_dtype_is_read_from_the_init_path(tmp_path):
    tiny_pt = str(ROOT / "checkpoints" / "tiny-base.pt")  # a project checkpoint of fp32 weights
    assert memory_plan(LLADA, "sft", sft_cfg(init=tiny_pt)).weights_dtype == torch.float32
    (tmp_path / "config.json").write_text(json.dumps({**LLADA.to_dict(), "torch_dtype": "bfloat16"}))
    assert memory_plan(LLADA, "sft", sft_cfg(init=str(tmp_path))).weights_dtype == torch.bfloat16


# -----------------------------------------------------------------------------
# How the parts move with the settings


def test_checkpointing_lowers_the_activations():
    for stage, cfg in (("sft", sft_cfg), ("grpo", grpo_cfg)):
        on = memory_plan(LLADA, stage, cfg(checkpointing=True), weights_dtype=torch.bfloat16)
        off = memory_plan(LLADA, stage, cfg(checkpointing=False), weights_dtype=torch.bfloat16)
        assert on.activations < off.activations / 5  # 32 block inputs + 1 block, instead of 32 blocks
        assert on.weights == off.weights and on.logits == off.logits


def test_the_estimate_grows_with_rows_and_length():
    sizes = lambda stage, **kw: memory_plan(LLADA, stage, (sft_cfg if stage == "sft" else grpo_cfg)(**kw),  # noqa
                                            weights_dtype=torch.bfloat16)
    a, b, c = sizes("sft", micro_batch=1), sizes("sft", micro_batch=2), sizes("sft", micro_batch=1, seq_len=2048)
    assert b.activations > a.activations and b.logits > a.logits and b.total > a.total
    assert c.activations < a.activations and c.logits < a.logits
    g1, g2 = sizes("grpo", logp_chunk=3), sizes("grpo", logp_chunk=6)
    assert g2.activations > g1.activations and g2.logits > g1.logits and g2.logp_forward > g1.logp_forward
    assert sizes("grpo", rollout_batch=12).rollout > sizes("grpo", rollout_batch=6).rollout
    assert sizes("grpo", gen_length=512).rollout > sizes("grpo").rollout
    # the float64 Gumbel noise (2 + 16 bytes per bf16 logit): greedy (temperature 0) needs only the
    # confidence's fp32 softmax (2 + 8)
    greedy, sampled = sizes("grpo", temperature=0.0).rollout, sizes("grpo").rollout
    assert 0.5 < greedy / sampled < 0.6


def test_the_plan_prints_one_line_per_part_and_the_total():
    text = str(memory_plan(LLADA, "grpo", grpo_cfg(), weights_dtype=torch.bfloat16))
    for part in ("weights", "optimizer", "kept log-probs", "activations", "logits", "log-prob forward", "rollout",
                 "allowance", "total"):
        assert f"\n  {part} " in text, part
    assert text.startswith("memory plan: grpo") and "16.03 GB" in text and "8,015,581,184" in text


# -----------------------------------------------------------------------------
# Fits or not


def test_check_fits_refuses_with_the_numbers_and_what_to_change():
    plan = memory_plan(LLADA, "sft", sft_cfg(checkpointing=False, micro_batch=8), weights_dtype=torch.bfloat16)
    with pytest.raises(MemoryPlanError) as info:
        check_fits(plan, 79.6 * GB, "cuda:0")
    message = str(info.value)
    assert f"needs ~{plan.total / GB:.1f} GB" in message and "cuda:0 has 79.6 GB" in message
    assert f"weights {plan.weights / GB:.1f}" in message and f"activations {plan.activations / GB:.1f}" in message
    assert "turn on --checkpointing" in message and "lower --micro_batch (now 8)" in message
    assert "e.g. --checkpointing --micro_batch=" in message
    assert isinstance(info.value, ValueError)  # one_line_errors turns it into one line
    assert check_fits(plan, None) is plan and check_fits(plan, plan.total) is plan


def test_what_fits_on_24_40_80_gb_for_d1s_runs():
    gib = 2**30
    grpo = memory_plan(LLADA, "grpo", grpo_cfg(), weights_dtype=torch.bfloat16)
    sft = memory_plan(LLADA, "sft", sft_cfg(), weights_dtype=torch.bfloat16)
    for plan in (grpo, sft):
        assert what_fits(plan, 40 * gib) == (True, "") and what_fits(plan, 80 * gib) == (True, "")
    fits, advice = what_fits(grpo, 24 * gib)
    assert not fits and "--rollout_batch=" in advice  # the rollout of 6 rows (Gumbel noise) is the peak
    assert not what_fits(sft, 24 * gib)[0]
    full = memory_plan(LLADA, "grpo", grpo_cfg(lora_r=0), weights_dtype=torch.bfloat16)
    fits, advice = what_fits(full, 80 * gib)
    assert not fits and advice.startswith("no: the bf16 weights, their gradients") and "--lora_r=128" in advice


def test_plan_run_prints_the_plan_then_checks_the_limit(tiny_model, capsys):
    config = tiny_model().config
    cfg = sft_cfg(lora_r=0, seq_len=64, memory_limit_gb=None)
    plan = memory.plan_run(config, "sft", cfg, "cpu", weights_dtype=torch.float32)  # the host's memory: fits
    assert capsys.readouterr().out.startswith("memory plan: sft") and plan.total < GB * 1.1
    with pytest.raises(MemoryPlanError, match=r"but --memory_limit_gb=0.5 has 0.5 GB"):
        memory.plan_run(config, "sft", sft_cfg(lora_r=0, seq_len=64, memory_limit_gb=0.5), "cpu",
                        weights_dtype=torch.float32)  # the 1 GB allowance alone is more


def test_device_memory():
    assert memory.device_memory_bytes("cpu") > 10**8
    assert memory.device_memory_bytes("meta") is None


# -----------------------------------------------------------------------------
# The formula against what really happens


ACTIVATION_CASES = {  # (weights dtype, bf16 autocast, LoRA targets or None, LoRA dropout, attention)
    "fp32 full fine-tuning": (torch.float32, False, None, 0.0, "sdpa"),
    "bf16 weights, LoRA q,k,v,up (d1's RL)": (torch.bfloat16, True, RL_TARGETS, 0.0, "sdpa"),
    "bf16 weights, LoRA with dropout (d1's presets)": (torch.bfloat16, True, RL_TARGETS, 0.05, "sdpa"),
    "bf16 full fine-tuning": (torch.bfloat16, True, None, 0.0, "sdpa"),
    "fp32 weights under bf16 autocast, LoRA everywhere": (torch.float32, True, ",".join(memory.LLADA_LINEARS), 0.0,
                                                          "sdpa"),
    "bf16 weights, LoRA, the written-out attention": (torch.bfloat16, True, RL_TARGETS, 0.0, "eager"),
}


def saved_tensor_bytes(model, ids, autocast):
    """Bytes autograd saves for backward in model(ids): each storage once, the parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids)
    return sum(seen.values())


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_the_activation_formula_matches_the_saved_tensors(case):
    """The plan's activations against torch.autograd.graph.saved_tensors_hooks on a small model."""
    dtype, autocast, targets, dropout, attn_impl = ACTIVATION_CASES[case]
    config = Config(d_model=64, n_layers=3, n_heads=4, n_kv_heads=4, mlp_hidden_size=192, vocab_size=512,
                    embedding_size=512, max_sequence_length=256, attn_impl=attn_impl)
    rows, T, r = 2, 64, 8
    w = torch.finfo(dtype).bits // 8
    c = 2 if autocast or w == 2 else 4
    lora_targets = tuple(targets.split(",")) if targets else ()
    ids = torch.randint(0, 500, (rows, T))
    for checkpointing in (False, True):
        model = Model(config).init_weights(seed=0).to(dtype)
        if targets:
            add_lora(model, targets=lora_targets, r=r, dropout=dropout)
        model.train()
        model.checkpointing = checkpointing
        got = saved_tensor_bytes(model, ids, autocast)
        plan = activation_bytes(config, rows, T, c, w, w, r if targets else 0, lora_targets, checkpointing, dropout)
        if not checkpointing:
            assert 0.8 < plan["saved"] / got < 1.25, (got, plan)
        else:
            # the forward keeps the 3 block inputs and the head's tensors; one block is saved again
            # while it is recomputed in backward, which the plan adds (the hooks see only the forward)
            blocks_only = activation_bytes(config, rows, T, c, w, w, r if targets else 0, lora_targets, False,
                                           dropout)["saved"]
            assert got <= plan["saved"] < blocks_only, (got, plan, blocks_only)
            assert plan["saved"] - got < 1.25 * blocks_only / config.n_layers


PEAK_SCRIPT = r"""
import re, sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1])
from diffusion import _commit, masked_token_ce

def hwm():  # this process's peak resident memory (Linux)
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024

rows, T, V = 2, 64, 100_000
logits = torch.empty(rows, T, V, dtype=torch.bfloat16).normal_()  # (B, T, V), made without an fp32 copy
everywhere = torch.ones(rows, T, dtype=torch.bool)
base = hwm()
if sys.argv[2] == "rollout":  # one sampler step's proposals and confidences, temperature 0.9
    _commit(logits, everywhere, T, torch.ones(rows, dtype=torch.long), "low_confidence", 0.9, None, None)
else:  # the SFT loss with every position masked, forward and backward
    logits.requires_grad_()
    masked_token_ce(logits, torch.randint(0, V, (rows, T)), everywhere).sum().backward()
print((hwm() - base) / logits.numel())
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc/self/status (VmHWM)")
def test_the_logits_formulas_match_a_cpu_processs_peak_memory():
    """Bytes per logit beyond the logits themselves, measured as peak resident memory growth in a
    fresh process each: the sampler's step (diffusion.add_gumbel_noise's float64 arrays, then the
    confidence's softmax) and the loss (fp32 log-softmax)."""
    procs = {which: subprocess.Popen([sys.executable, "-c", PEAK_SCRIPT, str(ROOT), which], stdout=subprocess.PIPE,
                                     text=True) for which in ("rollout", "loss")}
    measured = {which: float(p.communicate(timeout=120)[0]) for which, p in procs.items()}
    one = SimpleNamespace(embedding_size=1, n_layers=0, d_model=0, mlp_hidden_size=0, n_heads=0,
                          attn_impl="sdpa")  # counts bytes per logit
    # 16: the float64 copy of the logits and u (minus the bf16 logits, there before); the measurement
    # adds small overheads (the proposals, the allocator's rounding)
    rollout_plan = memory.rollout_bytes(one, 1, 1, 2, 0.9) - 2
    assert rollout_plan == 16 and 0.85 < rollout_plan / measured["rollout"] < 1.2, measured
    # 12 with every position scored (T' = T): backward's three fp32 tensors, the larger phase (forward:
    # the logits' 2 + 10); here the logits stay alive throughout, so the growth is the backward's
    loss_plan = memory.logits_bytes(one, 1, 1, 1, 2)
    assert 0.8 < loss_plan / measured["loss"] < 1.25, measured


# -----------------------------------------------------------------------------
# The command lines


def run(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


def run_all(*argvs):
    """Several commands at once (each starts Python and torch): their results, in order."""
    with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
        return list(pool.map(lambda argv: run(*argv), argvs))


def test_train_plan_prints_the_plan_and_the_fits_table(tmp_path):
    folder = tmp_path / "llada-fp32"  # a Hugging Face-format folder: its config.json and torch_dtype, no weights
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**LLADA.to_dict(), "torch_dtype": "float32"}))
    out_dir = tmp_path / "out"
    sft, grpo, d1, fp32 = run_all(
        ("train.py", "--stage=sft", "--lora_r=128", "--lora_targets=q_proj,k_proj,v_proj", "--batch_size=8",
         "--micro_batch=1", "--seq_len=4096", "--checkpointing", f"--out_dir={out_dir}", "--plan=llada-8b"),
        ("train.py", "--stage", "grpo", "--lora_r=128", f"--lora_targets={RL_TARGETS}", "--lora_dropout=0.05",
         "--gen_length=256", "--diffusion_steps=128", "--max_prompt_length=200", "--questions_per_step=16",
         "--rollout_batch=6", "--plan", "llada-8b", "--logp_chunk=6", "--remasking=low_confidence", "--checkpointing",
         "--mu=12", "--cache=none"),
        ("train.py", "--stage", "grpo", "--preset=d1", "--task=gsm8k", "--plan=llada-8b"),
        ("train.py", "--stage=sft", "--preset=d1", f"--plan={folder}"))
    for result in (sft, grpo, d1, fp32):
        assert result.returncode == 0, result.stderr
        assert "| card | memory | fits? | what would fit |" in result.stdout
    assert "memory plan: sft" in sft.stdout and "16.03 GB" in sft.stdout
    assert "| 24 GB | 25.8 GB | no" in sft.stdout and "| 40 GB | 42.9 GB | yes" in sft.stdout
    assert not out_dir.exists()  # a plan writes nothing
    assert "memory plan: grpo" in grpo.stdout and "rollout" in grpo.stdout
    assert "| 24 GB | 25.8 GB | no" in grpo.stdout and "--rollout_batch=" in grpo.stdout
    assert "| 80 GB | 85.9 GB | yes" in grpo.stdout
    assert d1.stdout == grpo.stdout  # the preset's keys, written out above
    assert "(fp32," in fp32.stdout and f"{8_015_581_184 * 4 / GB:.2f} GB" in fp32.stdout


def test_train_plan_refuses_bad_input_in_one_line():
    bad_cases = ((["--stage=pretrain", "--plan=tiny"], "--plan is for sft and grpo"),
                 (["--stage=sft", "--plan"], "--plan needs a model"),
                 (["--stage=sft", "--micro_bach=2", "--plan=tiny"], "unknown key --micro_bach"),
                 (["--stage=grpo", "--preset=d1", "--plan=llada-8b"], "--preset=d1 needs --task"),
                 (["--stage=sft", "--plan=nowhere"], "--plan=nowhere: not a preset"))
    for result, (_, expected) in zip(run_all(*(("train.py", *argv) for argv, _ in bad_cases)), bad_cases):
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr


def test_bench_fullscale_runs_small_on_cpu_and_refuses_the_8b_there():
    out = run("bench.py", "--fullscale", "--model=tiny", "--device=cpu", "--gen_length=32", "--prompt_length=16",
              "--diffusion_steps=8", "--sft_len=64")
    assert out.returncode == 0, out.stderr
    for part in ("GRPO rollout", "GRPO log-probs", "GRPO update", "GRPO step", "SFT step"):
        assert f"| {part} " in out.stdout, part
    assert "n/a (CPU)" in out.stdout and "memory.py asks for" in out.stdout
    assert "GPU-hours of d1's runs: only estimated for --model=llada-8b (this is 4-layer d=256)" in out.stdout
    if not torch.cuda.is_available():
        bad = run("bench.py", "--fullscale", "--device=cpu")
        assert bad.returncode == 1 and "--fullscale needs a CUDA GPU" in bad.stderr
        assert "--model=tiny runs it small on CPU" in bad.stderr


def test_d1_gpu_hours_from_one_questions_measured_seconds(capsys):
    """bench.py --fullscale's estimate: a d1 step is 16 questions x (rollout + mu x (log-probs + update))
    GPU-seconds, for d1's number of steps (optimizer steps / mu); SFT is steps x rows x one row's time."""
    from bench_fullscale import print_d1_gpu_hours
    parts = {"rollout": 20.0, "log-probs": 0.25, "update": 0.75}
    print_d1_gpu_hours(LLADA, torch.device("cpu"), parts, 2.0, SimpleNamespace(steps=2460, batch_size=8))
    out = capsys.readouterr().out
    gsm8k = 642 * 16 * (20.0 + 12 * 1.0) / 3600  # 7,700 optimizer steps / mu 12 = 642 steps
    sudoku = 475 * 16 * (20.0 + 8 * 1.0) / 3600  # 3,800 / mu 8 = 475
    assert f"| diffu-GRPO gsm8k (mu 12) | 642 | {gsm8k:,.0f} |" in out
    assert f"| diffu-GRPO sudoku (mu 8) | 475 | {sudoku:,.0f} |" in out
    assert f"| SFT on s1K | 2460 x 8 rows | {2460 * 8 * 2.0 / 3600:,.0f} |" in out
    assert "192 to 384 GPU-hours" in out


def test_the_estimators_extra_passes_scale_the_update_not_the_no_grad_log_probs():
    """--estimator=coupled keeps 2 passes' activations until backward (elbo: K), as twice the rows
    would; the no-grad log-probs run one pass at a time, so that phase does not grow."""
    base = dict(lora_r=128, lora_targets=RL_TARGETS, logp_chunk=3, questions_per_step=1, gen_length=256,
                max_prompt_length=200, checkpointing=True)
    plan = functools.partial(memory.memory_plan, LLADA, "grpo", weights_dtype=torch.bfloat16)
    d1 = plan(SimpleNamespace(**base))
    twice = plan(SimpleNamespace(**{**base, "logp_chunk": 6}))
    coupled = plan(SimpleNamespace(**base, estimator="coupled"))
    elbo = plan(SimpleNamespace(**base, estimator="elbo", elbo_samples=3))
    assert (coupled.activations, coupled.logits) == (twice.activations, twice.logits)
    assert coupled.activations > d1.activations and elbo.logits == 3 * d1.logits
    assert coupled.logp_forward == elbo.logp_forward == d1.logp_forward
    assert "log-prob chunk 3 x (200 + 256) tokens, 2 passes each" in coupled.notes["activations"]
    assert "logp_chunk 3," in coupled.title and "passes" not in d1.notes["activations"]
