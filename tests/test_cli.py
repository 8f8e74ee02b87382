"""Every entry point, run as a user runs it (a subprocess), against a table of bad inputs.

Each case must end with a non-zero exit, no traceback, ONE line on stderr that names the problem,
and every file that was there before exactly as it was (no new ones either). The cases run in
parallel, each in a workspace of its own: an earlier run's folder (a metrics log and a checkpoint),
a folder, a text file, a truncated checkpoint, a truncated generation file, and a link to the
shipped checkpoints so the default paths work.
"""
import hashlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GRPO = ["train.py", "--stage", "grpo", "--out_dir=run"]
SFT = ["train.py", "--stage", "sft", "--out_dir=run"]
PRETRAIN = ["train.py", "--stage", "pretrain", "--out_dir=run"]
EVAL = ["eval.py"]
SAMPLE = ["sample.py", "--model=checkpoints/tiny-sft.pt"]
BENCH = ["bench.py"]

CASES = [  # (command, what stderr must say)
    # --- train.py: keys, types and ranges
    ([*GRPO, "--gen_length=1024"], "--diffusion_steps=48 must be a multiple of the number of blocks"),
    ([*GRPO, "--gen_length=1024", "--diffusion_steps=512"], "--gen_length=1024: the longest prompt .* at most 2"),
    ([*GRPO, "--gen_lenght=64"], "unknown key --gen_lenght; did you mean --gen_length?"),
    ([*GRPO, "--dtype=float16"], "--dtype='float16': expected one of auto, bfloat16, float32"),
    ([*GRPO, "--steps=ten"], "--steps='ten': expected an integer"),
    ([*GRPO, "--steps=0"], "--steps=0: must be at least 1"),
    ([*GRPO, "--lr=nan"], "--lr='nan': expected a number"),
    ([*GRPO, "--lr=-1"], "--lr=-1.0: must be more than 0"),
    ([*GRPO, "--group_size=1"], "--group_size=1: GRPO needs at least 2"),
    ([*GRPO, "--p_mask_prompt=1.5"], "--p_mask_prompt=1.5: must be at least 0 and at most 1"),
    ([*GRPO, "--remasking=sideways"], "--remasking='sideways': expected one of low_confidence, random"),
    ([*GRPO, "--tasks=chess"], "unknown task 'chess'"),
    ([*GRPO, "--lora_targets=q_proj,wq"], "--lora_targets='wq': expected one of q_proj"),
    ([*GRPO, "--betas=0.9"], "--betas='0.9': expected 2 comma-separated values"),
    ([*SFT, "--resume=maybe"], "--resume='maybe': expected true or false"),
    ([*SFT, "--batch_size=0"], "--batch_size=0: must be at least 1"),
    ([*PRETRAIN, "--seq_len=1000"], "--seq_len=1000: must be at least 2 and at most 256"),
    ([*PRETRAIN, "--model=huge"], "--model='huge': expected one of tiny, llada-8b"),
    ([*PRETRAIN, "--steps"], "--steps needs a value"),
    ([*GRPO, "oops"], "unexpected argument 'oops'"),
    (["train.py"], "usage: python train.py --stage"),
    (["train.py", "--stage", "rl"], "--stage='rl': expected one of pretrain, sft, grpo"),
    # --- train.py: devices and paths
    ([*GRPO, "--device=cuda"], "--device=cuda: CUDA is not available on this machine"),
    ([*SFT, "--device=cuda"], "--device=cuda: CUDA is not available on this machine"),
    ([*PRETRAIN, "--device=cuda:1"], "--device=cuda:1: CUDA is not available on this machine"),
    ([*PRETRAIN, "--device=tpu"], "--device='tpu': expected auto, cpu, cuda, cuda:N or mps"),
    ([*GRPO, "--init=folder"], "--init=folder: the folder has no config.json"),
    ([*GRPO, "--init=notes.txt"], "checkpoint notes.txt is not a readable nano-d1 checkpoint"),
    ([*SFT, "--init=truncated.pt"], "checkpoint truncated.pt is not a readable nano-d1 checkpoint"),
    ([*SFT, "--init=missing.pt"], "--init=missing.pt: no such file or folder"),
    (["train.py", "--stage", "grpo", "--resume", "--out_dir=folder"], r"checkpoint folder/ckpt.pt does not exist"),
    ([*GRPO, "--resume", "--steps=2"], r"checkpoint run/ckpt.pt is not a readable nano-d1 checkpoint"),
    (["train.py", "--stage", "grpo", "--out_dir=notes.txt"], "--out_dir=notes.txt: is a file; expected a folder"),
    ([*SFT, "--export=folder"], "--export=folder: a folder that holds other files"),
    ([*SFT, "--export=notes.txt"], "--export=notes.txt: is a file; expected a .pt path or a folder"),
    # --- eval.py, each mode
    ([*EVAL, "--rescore", "gsm8k_missing.json"], "--rescore: gsm8k_missing.json: no such file"),
    ([*EVAL, "--rescore", "missing.json"], "--rescore: missing.json: no such file"),
    ([*EVAL, "--rescore", "folder"], "--rescore: folder: is a folder"),
    ([*EVAL, "--rescore", "gsm8k_truncated.json"], "gsm8k_truncated.json: not a d1 generation file"),
    ([*EVAL, "--rescore", "notes.txt"], "notes.txt: cannot tell the task from the file name"),
    ([*EVAL, "--rescore", "notes.txt", "--task=chess"], "--task='chess': expected one of gsm8k"),
    ([*EVAL, "--table", "--n=-3"], "--n=-3: must be at least 1"),
    ([*EVAL, "--table", "--n=0"], "--n=0: must be at least 1"),
    ([*EVAL, "--table", "--gen_length=40"], "--gen_length=40 must be a multiple of --block_length=32"),
    ([*EVAL, "--table", "--device=cuda"], "--device=cuda: CUDA is not available on this machine"),
    ([*EVAL, "--ckpt=folder"], "checkpoint folder is a folder"),
    ([*EVAL, "--ckpt=truncated.pt"], "checkpoint truncated.pt is not a readable nano-d1 checkpoint"),
    ([*EVAL, "--ckpt=checkpoints/tiny-sft.pt", "--table"], "give exactly one of --ckpt=FILE, --table"),
    ([*EVAL], "give exactly one of --ckpt=FILE, --table, --rescore"),
    # --- sample.py
    ([*SAMPLE, "--prompt="], "--prompt is required and must not be blank"),
    (["sample.py", "--prompt=hi"], "--model is required"),
    (["sample.py", "--model=missing.pt", "--prompt=hi"], "--model=missing.pt: no such file or folder"),
    (["sample.py", "--model=notes.txt", "--prompt=hi"], "checkpoint notes.txt is not a readable nano-d1 checkpoint"),
    (["sample.py", "--model=folder", "--prompt=hi"], "folder has no config.json"),
    ([*SAMPLE, "--prompt=hi", "--device=cuda"], "--device=cuda: CUDA is not available on this machine"),
    ([*SAMPLE, "--prompt=hi", "--gen_length=100"], "--gen_length=100 must be a multiple of --block_length=32"),
    ([*SAMPLE, "--prompt=hi", "--steps=abc"], "--steps='abc': expected an integer"),
    ([*SAMPLE, "--prompt=hi", "--gen_length=256"], "exceeds the model's context of 256 tokens"),
    # --- bench.py
    ([*BENCH, "--model=huge"], "--model='huge': expected one of tiny, llada-8b"),
    ([*BENCH, "--seq_len=0"], "--seq_len=0: must be at least 2"),
    ([*BENCH, "--batch_size=-1"], "--batch_size=-1: must be at least 1"),
    ([*BENCH, "--device=cuda"], "--device=cuda: CUDA is not available on this machine"),
    ([*BENCH, "--bogus"], "unknown key --bogus"),
]


def make_workspace(path):
    """The files a user might already have, which no failing command may touch."""
    (path / "run").mkdir(parents=True)
    (path / "run" / "metrics.jsonl").write_text("".join(f'{{"step": {i}, "loss": 1.0}}\n' for i in range(1, 7)))
    (path / "run" / "ckpt.pt").write_bytes(b"an earlier run's checkpoint, not readable as one")
    (path / "folder").mkdir()
    (path / "folder" / "keep.txt").write_text("a folder's file\n")
    (path / "notes.txt").write_text("just text\n")
    (path / "truncated.pt").write_bytes((ROOT / "checkpoints" / "tiny-sft.pt").read_bytes()[:5000])
    (path / "gsm8k_truncated.json").write_text('{"generations": [{"question": "q", ')
    (path / "checkpoints").symlink_to(ROOT / "checkpoints")


def snapshot(path):
    """{relative path: sha256} of every file below path (the linked checkpoints included)."""
    files = {}
    for root, _, names in os.walk(path, followlinks=True):
        for name in names:
            file = Path(root) / name
            files[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return files


def run_case(workspace, argv):
    before = snapshot(workspace)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NANO_D1_DEBUG", None)
    result = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, before, snapshot(workspace)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case at once (subprocesses in parallel; each starts Python and torch)."""
    workspaces = [tmp_path_factory.mktemp(f"case{i}") for i in range(len(CASES))]
    for workspace in workspaces:
        make_workspace(workspace)
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool:
        return list(pool.map(run_case, workspaces, [argv for argv, _ in CASES]))


@pytest.mark.parametrize("i", range(len(CASES)), ids=[" ".join(argv) for argv, _ in CASES])
def test_bad_input_is_refused_in_one_line_and_loses_nothing(results, i):
    (argv, expected), (result, before, after) = CASES[i], results[i]
    assert result.returncode != 0, f"exit 0 for {argv}: {result.stdout[-300:]}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"want one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith(f"{argv[0]}: "), lines[0]
    assert re.search(expected, lines[0]), f"{expected!r} not in {lines[0]!r}"
    assert "weights_only" not in lines[0]  # never torch's advice to run a file's code
    assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"
