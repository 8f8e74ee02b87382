"""d1 at full scale, in miniature: a small random LLaDA folder in the official format goes through
SFT on s1K-format rows -> export -> diffu-GRPO on GSM8K-format rows -> export -> evaluation ->
rescoring, through the command lines a GPU user types with LLaDA-8B (README, "d1 at full scale"),
with tiny sizes. Also: exports reload with identical logits, a LoRA run resumes exactly, and bad
input is refused with a clear message before anything is written."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from checkpoint import load_checkpoint, load_pretrained
from common import parse_config
from fake_llada import make_llada_folder, write_countdown, write_gsm8k, write_s1k
from lora import add_lora, merge_lora
from sft import SFTConfig, train_sft

ROOT = Path(__file__).resolve().parent.parent
# The GPU user's commands with --preset=d1, shrunk: these keys override the preset's sizes.
SFT_SMALL = ["--steps=2", "--seq_len=192", "--batch_size=2", "--micro_batch=1", "--lora_r=8", "--holdout=2",
             "--device=cpu", "--ckpt_every=1"]
GRPO_SMALL = ["--steps=2", "--questions_per_step=2", "--group_size=3", "--gen_length=32", "--diffusion_steps=16",
              "--mu=2", "--lora_r=8", "--rollout_batch=3", "--logp_chunk=3", "--device=cpu", "--sample_every=0"]


def run(*args, ok=True):
    """Run a project script as a user would; returns its stdout (and fails the test on an error)."""
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if ok and done.returncode != 0:
        raise AssertionError(f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The base model folder and the data files, built once for this module."""
    root = tmp_path_factory.mktemp("fullscale")
    files = {"base": make_llada_folder(root / "llada"), "s1k": root / "s1k.jsonl",
             "gsm8k_train": root / "gsm8k_train.jsonl", "gsm8k_test": root / "gsm8k_test.jsonl",
             "countdown": root / "countdown.jsonl", "root": root}
    write_s1k(files["s1k"], 8)
    write_gsm8k(files["gsm8k_train"], 12, seed=0)
    write_gsm8k(files["gsm8k_test"], 4, seed=1)
    write_countdown(files["countdown"], 6)
    return files


def logits_of(model, seed=0):
    torch.manual_seed(seed)
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        return model.eval()(ids).float()


def merged_from_run(base, out_dir):
    """The base folder plus the adapters of out_dir/ckpt.pt, merged: what the run trained."""
    ckpt = load_checkpoint(Path(out_dir) / "ckpt.pt", adapters_only=True)
    cfg = ckpt["train_config"]
    model = load_pretrained(base)
    add_lora(model, tuple(cfg["lora_targets"].split(",")), cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"])
    model.load_state_dict(ckpt["lora_adapters"], strict=False)
    return merge_lora(model)


def test_sft_then_grpo_then_eval_through_the_command_lines(world):
    root, base = world["root"], world["base"]

    # 1. SFT from the official folder on s1K rows, exported as a merged Hugging Face folder.
    out = run("train.py", "--stage", "sft", f"--init={base}", f"--data={world['s1k']}", "--preset=d1", *SFT_SMALL,
              f"--out_dir={root / 'sft-run'}", f"--export={root / 'sft'}").stdout
    assert "lora_r = 8   (command line, preset d1: 128)" in out and "lr = 1e-05   (preset d1)" in out
    assert "memory plan" in out.lower()
    assert {p.name for p in (root / "sft").iterdir()} >= {"config.json", "tokenizer.json", "model.safetensors"}
    assert "model" not in torch.load(root / "sft-run" / "ckpt.pt", weights_only=True)  # adapters only
    torch.testing.assert_close(logits_of(load_pretrained(root / "sft")),
                               logits_of(merged_from_run(base, root / "sft-run")), rtol=0, atol=0)

    # 2. diffu-GRPO on GSM8K rows from the SFT export, exported again.
    out = run("train.py", "--stage", "grpo", f"--init={root / 'sft'}", "--task=gsm8k",
              f"--data={world['gsm8k_train']}", "--preset=d1", *GRPO_SMALL, f"--out_dir={root / 'grpo-run'}",
              f"--export={root / 'grpo'}").stdout
    assert "mu = 2   (command line, preset d1: 12)" in out and "grpo step    2 |" in out
    rows = [json.loads(line) for line in (root / "grpo-run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "reward/correctness" in rows[0]
    torch.testing.assert_close(logits_of(load_pretrained(root / "grpo")),
                               logits_of(merged_from_run(root / "sft", root / "grpo-run")), rtol=0, atol=0)

    # The export also opens in sample.py, as a user would chat with it.
    out = run("sample.py", f"--model={root / 'grpo'}", "--prompt=What is 2+3?", "--gen_length=32", "--steps=16",
              "--device=cpu").stdout
    assert out.strip()

    # 3. d1's evaluation of the RL export, then the same file rescored: the same accuracy line.
    gens = root / "gsm8k_eval_32_16_generations.json"
    out = run("eval.py", f"--model={root / 'grpo'}", "--task=gsm8k", f"--data={world['gsm8k_test']}",
              "--gen_length=32", "--n=3", "--batch_size=2", f"--out={gens}", "--device=cpu").stdout
    saved = json.loads(gens.read_text())
    assert len(saved["generations"]) == 3 and saved["gen_length"] == 32 and saved["diffusion_steps"] == 16
    assert set(saved["generations"][0]) == {"question", "generations", "ground_truth"}
    accuracy = [line for line in out.splitlines() if line.startswith("accuracy:")]
    assert accuracy and accuracy == [line for line in run("eval.py", "--rescore", gens).stdout.splitlines()
                                     if line.startswith("accuracy:")]
    # Asked again for more items, it continues after the three it has.
    out = run("eval.py", f"--model={root / 'grpo'}", "--task=gsm8k", f"--data={world['gsm8k_test']}",
              "--gen_length=32", "--n=4", "--batch_size=2", f"--out={gens}", "--device=cpu").stdout
    assert "continuing after the 3 answers" in out and len(json.loads(gens.read_text())["generations"]) == 4
    assert json.loads(gens.read_text())["generations"][:3] == saved["generations"]


def test_a_lora_run_on_a_folder_resumes_exactly(world, tmp_path):
    args = [f"--init={world['base']}", f"--data={world['s1k']}", "--preset=d1", "--decay_steps=3",
            *[a for a in SFT_SMALL if not a.startswith("--steps")]]
    whole = train_sft(parse_config(SFTConfig, [*args, "--steps=3", f"--out_dir={tmp_path / 'whole'}"]))
    train_sft(parse_config(SFTConfig, [*args, "--steps=2", f"--out_dir={tmp_path / 'cut'}"]))
    resumed = train_sft(parse_config(SFTConfig, [*args, "--steps=3", f"--out_dir={tmp_path / 'cut'}", "--resume"]))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("case", ["no tokenizer.json", "other task's data", "unknown task", "does not fit"])
def test_bad_input_is_refused_before_anything_is_written(world, tmp_path, case):
    base, out_dir = world["base"], tmp_path / "run"
    args = ["--task=gsm8k", f"--data={world['gsm8k_train']}", f"--init={base}"]
    if case == "no tokenizer.json":
        bare = tmp_path / "bare"
        bare.mkdir()
        for f in base.iterdir():
            if f.name != "tokenizer.json":
                (bare / f.name).write_bytes(f.read_bytes())
        args[2], expected = f"--init={bare}", "has no tokenizer.json"
    elif case == "other task's data":
        args[1], expected = f"--data={world['countdown']}", "looks like countdown data"
    elif case == "unknown task":
        args[0], expected = "--task=gsm9k", "gsm9k"
    else:
        args.append("--memory_limit_gb=0.001")
        expected = "GB"
    done = run("train.py", "--stage", "grpo", "--preset=d1" if case != "unknown task" else "--lr=1e-5",
               *args, *GRPO_SMALL, f"--out_dir={out_dir}", ok=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())
