"""train.py: config overrides, checkpoints (atomic, resumable, clear errors), the GRPO step end to end."""
import json
from dataclasses import asdict

import pytest
import torch

import train
from checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from model import Config, Model


def micro_config(**kw):
    """A model small enough for a test to train it (the tiny tokenizer's 264-row vocabulary)."""
    return Config(**{**dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, mlp_hidden_size=64), **kw})


def write_init_checkpoint(path, **kw):
    model = Model(micro_config(**kw)).init_weights(seed=0)
    save_checkpoint({"model": model.state_dict(), "config": asdict(model.config), "stage": "pretrain"}, path)
    return path


# -- config overrides ----------------------------------------------------------------------------


def test_overrides_are_type_checked_and_unknown_keys_named():
    cfg = train.parse_config(train.PretrainConfig, ["--steps=7", "--lr", "0.01", "--resume", "--out_dir=x"])
    assert (cfg.steps, cfg.lr, cfg.resume, cfg.out_dir) == (7, 0.01, True, "x")
    with pytest.raises(SystemExit, match="unknown key --stepz.*valid keys: .*steps"):
        train.parse_config(train.PretrainConfig, ["--stepz=3"])
    with pytest.raises(SystemExit, match=r"--steps='ten': expected int"):
        train.parse_config(train.PretrainConfig, ["--steps=ten"])
    with pytest.raises(SystemExit, match="--resume='maybe': expected bool"):
        train.parse_config(train.PretrainConfig, ["--resume=maybe"])


def test_main_rejects_unknown_stage():
    with pytest.raises(SystemExit, match="unknown stage 'rl'"):
        train.main(["--stage", "rl"])


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = train.PretrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert train.lr_at(0, cfg) == pytest.approx(0.1)
    assert train.lr_at(9, cfg) == pytest.approx(1.0)
    assert train.lr_at(60, cfg) == pytest.approx(0.55)
    assert train.lr_at(110, cfg) == pytest.approx(0.1)


# -- checkpoints ---------------------------------------------------------------------------------


def test_corrupt_and_truncated_checkpoints_give_clear_errors(tmp_path):
    good = write_init_checkpoint(tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(CheckpointError, match=f"{name} is corrupt or truncated"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_another_config_is_refused(tmp_path):
    path = write_init_checkpoint(tmp_path / "a.pt")
    ckpt = torch.load(path)
    ckpt["config"]["d_model"] = 64  # claims another width than its tensors have
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="does not fit this model config"):
        load_model(path)


def test_pack_rows_gives_chat_documents_their_own_padded_row_with_a_clean_prompt():
    from tokenizer import Tokenizer, chat_prompt

    tok = Tokenizer.tiny()
    rows, prompt_lengths = train.pack_rows(["1+1=2", "2+2=4", chat_prompt("q") + "a", "3+3=6"], tok, 48)
    assert rows.shape == (2, 48)
    assert rows[0][0] == tok.bos_id and rows[0][-1] == tok.eos_id  # the chat document, EOS-padded
    plain = "1+1=2<|endoftext|>2+2=4<|endoftext|>3+3=6"  # plain documents packed around it
    assert tok.decode(rows[1][: len(tok.encode(plain))].tolist()) == plain
    assert prompt_lengths.tolist() == [len(tok.chat("q")), 0]  # the loss keeps chat prompts clean


# -- pretraining resume --------------------------------------------------------------------------


def pretrain_args(out_dir, steps, *extra):
    return ["--stage", "pretrain", f"--out_dir={out_dir}", f"--steps={steps}", "--decay_steps=150",
            "--batch_size=4", "--seq_len=64", "--warmup_steps=5", "--log_every=1", "--sample_every=0",
            "--ckpt_every=1000", "--dtype=float32", *extra]


def test_resume_continues_exactly(tmp_path):
    """100 steps, then resume to 150, equals 150 steps straight (same seed): every loss matches."""
    train.main(pretrain_args(tmp_path / "straight", 150))
    train.main(pretrain_args(tmp_path / "resumed", 100))
    train.main(pretrain_args(tmp_path / "resumed", 150, "--resume"))
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, 151))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


# -- GRPO end to end -----------------------------------------------------------------------------


def grpo_args(init, out_dir, *extra):
    return ["--stage", "grpo", f"--init={init}", f"--out_dir={out_dir}", "--steps=1", "--questions_per_step=2",
            "--group_size=3", "--gen_length=32", "--diffusion_steps=8", "--mu=2", "--sample_every=0",
            "--dtype=float32", *extra]


def test_one_grpo_step_runs_end_to_end_and_is_seeded(tmp_path):
    init = write_init_checkpoint(tmp_path / "init.pt")
    train.main(grpo_args(init, tmp_path / "a"))
    train.main(grpo_args(init, tmp_path / "b"))
    a = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    b = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("reward", "reward_std", "accuracy", "kl", "clip_ratio", "loss", "completion_length",
                "zero_std_share", "seconds_rollout", "seconds_logps", "seconds_update"):
        assert key in a, key
    timing = {k for k in a if k.startswith("seconds")}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    model, ckpt = load_model(tmp_path / "a" / "ckpt.pt")
    assert ckpt["stage"] == "grpo" and ckpt["step"] == 1


def test_grpo_refuses_bad_input(tmp_path):
    init = write_init_checkpoint(tmp_path / "init.pt")
    with pytest.raises(SystemExit, match="group_size=1.*at least 2"):
        train.main(grpo_args(init, tmp_path / "x", "--group_size=1"))
    with pytest.raises(SystemExit, match="unknown task 'chess'"):
        train.main(grpo_args(init, tmp_path / "x", "--tasks=chess"))
    with pytest.raises(SystemExit, match="remasking='sideways'"):
        train.main(grpo_args(init, tmp_path / "x", "--remasking=sideways"))
    other = write_init_checkpoint(tmp_path / "other.pt", d_model=64)
    train.main(grpo_args(init, tmp_path / "run"))
    with pytest.raises(SystemExit, match="different model config: d_model=32"):
        train.main(grpo_args(other, tmp_path / "run", "--resume", "--steps=2"))


def test_lora_runs_export_merged_official_weights_and_resume(tmp_path):
    init = write_init_checkpoint(tmp_path / "init.pt")
    args = ["--stage", "sft", f"--init={init}", f"--out_dir={tmp_path / 'sft'}", "--n_per_task=4", "--batch_size=4",
            "--lora_r=4", "--log_every=1", "--sample_every=0", "--dtype=float32", f"--export={tmp_path / 'slim.pt'}"]
    train.main(args + ["--steps=2"])
    model, ckpt = load_model(tmp_path / "slim.pt")  # plain official keys: the adapters are merged in
    assert "optimizer" not in ckpt and not any("lora" in k for k in ckpt["model"])
    base, _ = load_model(init)
    assert not torch.equal(model.transformer.blocks[0].q_proj.weight, base.transformer.blocks[0].q_proj.weight)
    assert torch.equal(model.transformer.blocks[0].attn_out.weight, base.transformer.blocks[0].attn_out.weight)
    train.main(args + ["--steps=3", "--resume"])  # adapters come back from the run's checkpoint
    assert load_checkpoint(tmp_path / "sft" / "ckpt.pt")["step"] == 3
    train.main(grpo_args(init, tmp_path / "grpo", "--lora_r=4"))  # reference policy = adapters off
