"""train.py: the stage dispatcher and its one-line errors, checkpoints (atomic, resumable, clear errors),
pretraining resume, the GRPO step end to end, LoRA runs."""
import json

import pytest
import torch

import pretrain
import train
from checkpoint import CheckpointError, load_checkpoint, load_model


@pytest.fixture
def init(tiny_checkpoint):
    """A one-layer random model with the tiny tokenizer's vocabulary, small enough to train in a test."""
    return tiny_checkpoint("init.pt", n_layers=1)


def read_metrics(out_dir, name="metrics.jsonl"):
    return [json.loads(line) for line in (out_dir / name).read_text().splitlines()]


# -- the dispatcher ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--stage", "rl"], "--stage='rl': expected one of pretrain, sft, grpo"),
    (["--stage=rl"], "--stage='rl': expected one of pretrain, sft, grpo"),
    ([], "usage: python train.py --stage {pretrain,sft,grpo}"),
    (["--steps=3", "--stage", "sft"], "usage: python train.py --stage"),  # --stage first
    (["--stage", "pretrain", "--stepz=3"], "unknown key --stepz; did you mean --steps?"),
    (["--stage", "sft", "--steps=ten"], "--steps='ten': expected an integer"),
])
def test_user_errors_are_one_line(argv, message, user_error):
    assert user_error(train.main, argv, "train.py").startswith(message)


def test_help_of_a_stage_lists_its_keys(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--stage", "grpo", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("GRPOConfig: ") and "--group_size=6" in out


# -- checkpoints ---------------------------------------------------------------------------------


def test_corrupt_and_truncated_checkpoints_give_clear_errors(init, tmp_path):
    data = init.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(CheckpointError, match=f"{name} is not a readable nano-d1 checkpoint: corrupt, "
                                                  "truncated or another kind of file"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a project .pt file"):
        load_checkpoint(tmp_path)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="has no 'model' entry"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_config_is_refused(init):
    ckpt = torch.load(init)
    ckpt["config"]["d_model"] = 64  # claims another width than its tensors have
    torch.save(ckpt, init)
    with pytest.raises(CheckpointError, match="does not fit this model config"):
        load_model(init)


# -- pretraining resume --------------------------------------------------------------------------


def stage_args(stage, **keys):
    """train.py's command line for `stage`: --key=value for each key (True: a bare --flag)."""
    return ["--stage", stage] + [f"--{k}" if v is True else f"--{k}={v}" for k, v in keys.items()]


def pretrain_args(out_dir, steps, **keys):
    defaults = dict(decay_steps=30, batch_size=4, seq_len=64, warmup_steps=5, log_every=1, sample_every=0,
                    ckpt_every=1000, dtype="float32")
    return stage_args("pretrain", out_dir=out_dir, steps=steps, **{**defaults, **keys})


def test_a_failure_inside_a_run_names_what_it_kept(tmp_path, monkeypatch):
    real_batch = pretrain.pretrain_batch

    def batch_until_step_3(step, cfg, tok):
        if step == 3:
            raise RuntimeError("disk on fire")
        return real_batch(step, cfg, tok)

    monkeypatch.setattr(pretrain, "pretrain_batch", batch_until_step_3)
    with pytest.raises(SystemExit, match=r"^train.py: error: RuntimeError: disk on fire \(NANO_D1_DEBUG=1 .*\); "
                                         r"kept: .*ckpt.pt \(written \d\d:\d\d:\d\d\), .*metrics.jsonl \(to step 3\)$"):
        train.main(pretrain_args(tmp_path, 5, ckpt_every=2))
    monkeypatch.setenv("NANO_D1_DEBUG", "1")  # the traceback instead, for whoever debugs it
    with pytest.raises(RuntimeError, match="disk on fire"):
        train.main(pretrain_args(tmp_path, 5, ckpt_every=2))


def test_resume_continues_exactly(tmp_path):
    """20 steps, then resume to 30, equals 30 steps straight (same seed): every loss matches."""
    train.main(pretrain_args(tmp_path / "straight", 30))
    train.main(pretrain_args(tmp_path / "resumed", 20))
    train.main(pretrain_args(tmp_path / "resumed", 30, resume=True))
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 31))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


def test_a_second_fresh_run_keeps_the_first_runs_log(tmp_path, monkeypatch):
    train.main(pretrain_args(tmp_path, 3))
    first = read_metrics(tmp_path)
    train.main(pretrain_args(tmp_path, 2, seed=5))
    assert read_metrics(tmp_path).pop(0)["loss"] != first[0]["loss"]  # another run's log
    assert read_metrics(tmp_path, "metrics.jsonl.1") == first
    second = read_metrics(tmp_path)

    def no_batch(step, cfg, tok):
        raise ValueError("no data")

    monkeypatch.setattr(pretrain, "pretrain_batch", no_batch)  # a fresh run that fails before its first row
    with pytest.raises(SystemExit, match=r"^train.py: error: no data; this run wrote nothing to "):
        train.main(pretrain_args(tmp_path, 2))
    assert read_metrics(tmp_path) == second and not (tmp_path / "metrics.jsonl.2").exists()


# -- GRPO end to end -----------------------------------------------------------------------------


def grpo_args(init, out_dir, **keys):
    return stage_args("grpo", **{"init": init, "out_dir": out_dir, "steps": 1, "questions_per_step": 2,
                                 "group_size": 3, "gen_length": 32, "diffusion_steps": 8, "mu": 2,
                                 "sample_every": 0, "dtype": "float32", **keys})


def test_one_grpo_step_runs_end_to_end_and_is_seeded(init, tmp_path):
    train.main(grpo_args(init, tmp_path / "a"))
    train.main(grpo_args(init, tmp_path / "b"))
    [a], [b] = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    for key in ("reward", "reward_std", "accuracy", "kl", "clip_ratio", "loss", "completion_length",
                "zero_std_share", "seconds_rollout", "seconds_logps", "seconds_update"):
        assert key in a, key
    timing = {k for k in a if k.startswith("seconds")}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    model, ckpt = load_model(tmp_path / "a" / "ckpt.pt")
    assert ckpt["stage"] == "grpo" and ckpt["step"] == 1


def test_grpo_refuses_bad_input(init, tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="group_size=1.*at least 2"):
        train.main(grpo_args(init, tmp_path / "x", group_size=1))
    with pytest.raises(SystemExit, match="unknown task 'chess'"):
        train.main(grpo_args(init, tmp_path / "x", tasks="chess"))
    with pytest.raises(SystemExit, match="remasking='sideways'"):
        train.main(grpo_args(init, tmp_path / "x", remasking="sideways"))
    other = tiny_checkpoint("other.pt", n_layers=1, d_model=64)
    train.main(grpo_args(init, tmp_path / "run"))
    with pytest.raises(SystemExit, match="continues a run that started from --init=.*init.pt, not .*other.pt"):
        train.main(grpo_args(other, tmp_path / "run", resume=True, steps=2))


def test_lora_runs_export_merged_official_weights_and_resume(init, tmp_path):
    args = dict(init=init, out_dir=tmp_path / "sft", n_per_task=4, batch_size=4, lora_r=4, log_every=1,
                sample_every=0, dtype="float32", export=tmp_path / "slim.pt")
    train.main(stage_args("sft", steps=2, **args))
    model, ckpt = load_model(tmp_path / "slim.pt")  # plain official keys: the adapters are merged in
    assert "optimizer" not in ckpt and not any("lora" in k for k in ckpt["model"])
    base, _ = load_model(init)
    assert not torch.equal(model.transformer.blocks[0].q_proj.weight, base.transformer.blocks[0].q_proj.weight)
    assert torch.equal(model.transformer.blocks[0].attn_out.weight, base.transformer.blocks[0].attn_out.weight)
    train.main(stage_args("sft", steps=3, resume=True, **args))  # adapters come back from the run's checkpoint
    assert load_checkpoint(tmp_path / "sft" / "ckpt.pt")["step"] == 3
    train.main(grpo_args(init, tmp_path / "grpo", lora_r=4))  # reference policy = adapters off
