"""common.py: the command-line configs, --help, one-line errors, devices, seeds, the learning rate
schedule, the optimizer's groups, run checkpoints and the metrics log."""
import dataclasses
import json
import re
import time

import pytest
import torch

import checkpoint
import common
from common import (ConfigError, MetricsLog, RunConfig, cli, config_help, lr_at, make_optimizer, mix_seed,
                    parse_config, pick_device)
from eval import EvalConfig
from grpo import GRPOConfig
from pretrain import PretrainConfig
from sample import SampleConfig
from sft import SFTConfig

# -- parse_config --------------------------------------------------------------------------------


def test_key_value_forms_and_bare_flags():
    cfg = parse_config(PretrainConfig, ["--steps=7", "--lr", "0.01", "--sample_every=0", "--out_dir=x", "--seed", "-3"])
    assert (cfg.steps, cfg.lr, cfg.sample_every, cfg.out_dir, cfg.seed) == (7, 0.01, 0, "x", -3)
    untouched = {f.name for f in dataclasses.fields(PretrainConfig)} - {"steps", "lr", "sample_every", "out_dir", "seed"}
    assert all(getattr(cfg, k) == getattr(PretrainConfig(), k) for k in untouched)  # defaults elsewhere
    assert parse_config(PretrainConfig, ["--resume=false"]).resume is False
    assert parse_config(GRPOConfig, ["--scale_rewards_by_std"]).scale_rewards_by_std is True  # a bare flag
    assert parse_config(GRPOConfig, ["--scale_rewards_by_std=1", "--export="]).export == ""  # "" is a value
    assert parse_config(PretrainConfig, []) == PretrainConfig()


def test_tuple_fields_take_a_comma_list_or_several_values():
    assert parse_config(PretrainConfig, ["--betas=0.8,0.9"]).betas == (0.8, 0.9)
    assert parse_config(PretrainConfig, ["--betas", "0.8", "0.9", "--steps=2"]).betas == (0.8, 0.9)
    cfg = parse_config(EvalConfig, ["--rescore", "README.md", "pytest.ini", "--task", "gsm8k"])  # files that exist
    assert (cfg.rescore, cfg.task) == (("README.md", "pytest.ini"), "gsm8k")
    ckpt = "checkpoints/tiny-sft.pt"
    assert parse_config(EvalConfig, [f"--ckpt={ckpt}", "--gen_length=32,64"]).gen_length == (32, 64)
    with pytest.raises(ConfigError, match=r"--betas='0.9': expected 2 comma-separated values"):
        parse_config(PretrainConfig, ["--betas=0.9"])
    with pytest.raises(ConfigError, match=r"--gen_length='x': expected an integer"):
        parse_config(EvalConfig, [f"--ckpt={ckpt}", "--gen_length=32,x"])


def test_unknown_key_suggests_the_nearest_and_lists_all():
    with pytest.raises(ConfigError, match=r"unknown key --stepz; did you mean --steps\? valid keys: .*warmup_steps"):
        parse_config(PretrainConfig, ["--stepz=3"])
    with pytest.raises(ConfigError) as info:
        parse_config(PretrainConfig, ["--zzzzzz=3"])
    assert "did you mean" not in str(info.value) and "valid keys: batch_size, betas, " in str(info.value)


@pytest.mark.parametrize("arg, message", [
    ("--steps=ten", "--steps='ten': expected an integer"),
    ("--steps=1.5", "--steps='1.5': expected an integer"),
    ("--lr=fast", "--lr='fast': expected a number"),
    ("--lr=nan", "--lr='nan': expected a number"),
    ("--lr=inf", "--lr='inf': expected a number"),
    ("--resume=maybe", "--resume='maybe': expected true or false"),
])
def test_wrong_types_are_named(arg, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(PretrainConfig, [arg])


@pytest.mark.parametrize("argv, message", [
    (["--steps=1", "--steps=2"], "--steps is given twice"),
    (["--steps"], "--steps needs a value"),
    (["--steps", "--lr=1"], "--steps needs a value"),
    (["steps=3"], "unexpected argument 'steps=3': write --key=value"),
    (["--resume", "false"], "unexpected argument 'false'"),  # a bare flag takes no value
    (["--dtype=float16"], "--dtype='float16': expected one of auto, bfloat16, float32"),  # __post_init__ checks
    (["--steps=0"], "--steps=0: must be at least 1"),
])
def test_bad_command_lines_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(PretrainConfig, argv)


def test_post_init_value_errors_become_config_errors():
    with pytest.raises(ConfigError, match="--group_size=1: GRPO needs at least 2"):
        parse_config(GRPOConfig, ["--group_size=1"])
    with pytest.raises(ConfigError, match="--gen_length=40 must be a multiple of --block_length=32"):
        parse_config(GRPOConfig, ["--gen_length=40"])


# -- --help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PretrainConfig, SFTConfig, GRPOConfig, EvalConfig, SampleConfig])
def test_help_lists_every_key_with_its_default_and_comment(cls):
    lines = config_help(cls).splitlines()
    assert lines[0] == f"{cls.__name__}: {cls.__doc__.strip().splitlines()[0]}"
    assert lines[1] == "keys (--key=value):" and len(lines) == 2 + len(dataclasses.fields(cls))
    for line, f in zip(lines[2:], dataclasses.fields(cls)):
        default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
        key, _, comment = line.strip().partition("  ")
        assert key == f"--{f.name}={default}"
        assert comment.strip(), f"--{f.name} has no comment"


def test_help_takes_the_subclass_comment_and_exits(capsys):
    text = config_help(GRPOConfig)
    assert re.search(r"--steps=50 +rollout rounds of mu updates each; tiny \(d1: 475-642 rounds on 8 A100s\)$",
                     text, re.M)  # the subclass's comment, not FinetuneConfig's "optimizer steps"
    assert re.search(r"--betas=0.9,0.99 +AdamW \(d1\)$", text, re.M)
    assert re.search(r"--lr=0.001 +peak learning rate$", config_help(PretrainConfig), re.M)
    with pytest.raises(SystemExit) as info:
        cli(GRPOConfig, ["--steps=3", "--help"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == text


# -- one-line errors -----------------------------------------------------------------------------


def test_user_errors_become_one_line_exits_and_bugs_stay_tracebacks():
    for error in (ConfigError("bad key"), ValueError("bad key"), FileNotFoundError("bad key")):
        with pytest.raises(SystemExit, match=r"^prog: error: bad key$") as info:
            with common.one_line_errors("prog"):
                raise error
        assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(KeyError):
        with common.one_line_errors("prog"):
            raise KeyError("a bug")


# -- devices and seeds ---------------------------------------------------------------------------


def test_pick_device():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    for name in ("tpu", "cuda:x", "xla"):
        with pytest.raises(ConfigError, match=rf"--device='{name}': expected auto, cpu, cuda, cuda:N or mps"):
            pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_pick_device_refuses_cuda_without_cuda():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"--device={name}: CUDA is not available on this machine"):
            pick_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_pick_device_refuses_mps_without_mps():
    with pytest.raises(ConfigError, match="--device=mps: MPS is not available on this machine"):
        pick_device("mps")


def test_mix_seed():
    assert mix_seed() == 0 and mix_seed(42) == 42
    assert mix_seed(1, 2) == 1_000_005
    assert mix_seed(1337, 7, 3) == (1337 * 1_000_003 + 7) * 1_000_003 + 3
    assert mix_seed(1, 2) != mix_seed(2, 1)
    assert len({mix_seed(seed, step) for seed in range(5) for step in range(1000)}) == 5000  # no collisions


# -- learning rate and optimizer -----------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = PretrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)  # stays at the floor
    longer = PretrainConfig(lr=1.0, warmup_steps=10, steps=110, decay_steps=210, min_lr_ratio=0.1)
    assert lr_at(110, longer) == pytest.approx(0.55)  # decay_steps stretches the cosine past steps


def test_set_lr_and_weight_decay_on_matrices_only(tiny_model):
    model = tiny_model()
    cfg = RunConfig(lr=0.5, warmup_steps=4, weight_decay=0.3, betas=(0.8, 0.9))
    optimizer = make_optimizer(model, cfg)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.3 and plain["weight_decay"] == 0.0 and decayed["betas"] == (0.8, 0.9)
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.parameters() if p.dim() == 2}
    assert {id(p) for p in plain["params"]} == {id(p) for n, p in model.named_parameters() if "norm" in n or "ln_f" in n}
    assert common.set_lr(optimizer, 1, cfg) == pytest.approx(0.25)
    assert all(g["lr"] == pytest.approx(0.25) for g in optimizer.param_groups)


# -- run checkpoints -----------------------------------------------------------------------------


def test_restore_refuses_another_stage_and_a_slim_export(tiny_model, tmp_path):
    model = tiny_model()
    cfg = RunConfig(out_dir=str(tmp_path))
    optimizer, noise = make_optimizer(model, cfg), torch.Generator()
    checkpoint.save_run(cfg, "sft", model, optimizer, 3, noise)
    with pytest.raises(checkpoint.CheckpointError, match=r"ckpt.pt is a 'sft' checkpoint, not 'grpo'"):
        checkpoint.restore(cfg, "grpo", model, optimizer, noise)
    assert checkpoint.restore(cfg, "sft", model, optimizer, noise) == 3
    checkpoint.save_run(cfg, "sft", model, optimizer, 3, noise, slim=True)
    with pytest.raises(checkpoint.CheckpointError, match="has no optimizer state"):
        checkpoint.restore(cfg, "sft", model, optimizer, noise)


# -- the metrics log -----------------------------------------------------------------------------


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_fresh_run_keeps_the_old_log_and_resume_appends(tmp_path):
    log = tmp_path / "metrics.jsonl"
    first = MetricsLog(tmp_path, resume=False)
    first.write(step=1)
    first.write(step=2)
    assert read_rows(log) == [{"step": 1}, {"step": 2}]

    MetricsLog(tmp_path, resume=True).write(step=3)  # --resume appends
    assert read_rows(log) == [{"step": 1}, {"step": 2}, {"step": 3}]

    MetricsLog(tmp_path, resume=False)  # a fresh run that fails before its first row: nothing moves
    assert read_rows(log) == [{"step": 1}, {"step": 2}, {"step": 3}] and not (tmp_path / "metrics.jsonl.1").exists()

    MetricsLog(tmp_path, resume=False).write(step=1, run="second")  # a fresh run: the old log is set aside
    assert read_rows(tmp_path / "metrics.jsonl.1") == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert read_rows(log) == [{"step": 1, "run": "second"}]
    MetricsLog(tmp_path, resume=False).write(step=1, run="third")  # ... and the one before stays too
    assert read_rows(tmp_path / "metrics.jsonl.1") == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert read_rows(tmp_path / "metrics.jsonl.2") == [{"step": 1, "run": "second"}]
    assert read_rows(log) == [{"step": 1, "run": "third"}]


def test_metrics_log_makes_its_folder(tmp_path):
    MetricsLog(tmp_path / "new" / "run", resume=False).write(loss=1.5)
    assert read_rows(tmp_path / "new" / "run" / "metrics.jsonl") == [{"loss": 1.5}]


# -- --dtype=auto ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bf16_is_fast, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_follows_the_cpu_probe(monkeypatch, bf16_is_fast, expected):
    monkeypatch.setattr(common, "cpu_runs_bf16_fast", lambda: bf16_is_fast)
    assert common.pick_dtype("auto", torch.device("cpu")) == expected
    assert parse_config(PretrainConfig, ["--device=cpu"]).dtype == expected  # the config holds the choice
    assert parse_config(PretrainConfig, ["--device=cpu", "--dtype=bfloat16"]).dtype == "bfloat16"  # pinned
    with common.autocast(torch.device("cpu"), "auto"):
        assert torch.is_autocast_enabled("cpu") == bf16_is_fast


def test_cpu_probe_agrees_with_timed_matmuls():
    """The probe's answer is a measurement: bf16 must win clearly for it to say yes. Timings on a
    shared CPU wander (one 2-core machine ran 1.7x slower for minutes at a time), so the probe runs
    uncached between two timings of the same size and is checked only where both fall clearly on
    one side of its 1.5x line."""
    before = common.bf16_speedup(repeats=5)  # > 1 when bf16 is faster
    answer = common.cpu_runs_bf16_fast.__wrapped__()  # a fresh measurement, not the cached one
    after = common.bf16_speedup(repeats=5)
    if not (min(before, after) >= 2 or max(before, after) <= 1.2):
        pytest.skip(f"bf16 is {before:.2f}x then {after:.2f}x fp32 here: too near the probe's 1.5x line to check")
    assert answer == (before >= 2)


def test_autocast_refuses_an_unknown_dtype():
    with pytest.raises(ConfigError, match="--dtype='float16': expected one of auto, bfloat16, float32"):
        common.autocast(torch.device("cpu"), "float16")
