"""Several processes, one run (distributed.py): pretraining and SFT under torchrun on 2 CPU processes
(gloo) against the same command on 1 process. Same global batch, so the same losses and weights up
to float rounding; rank 0 alone prints and writes; a run stopped by a signal resumes on 1 process
and ends with the weights of a run that was never stopped.

Each run is a subprocess, as a user starts it (`python -m torch.distributed.run` is torchrun). With
--standalone torchrun picks a free port itself, so tests running side by side never collide.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distributed
from common import one_line_errors, report_what_was_kept, row_slices

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
# One thread per process, as torchrun sets it: 2 processes on 2 cores (and a test suite running
# beside them) would otherwise oversubscribe the cores, and torch's threads then slow down ~20x.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 3 steps of 4 rows of 64 tokens, fp32 (bf16 would round the two ways differently), lr above 0 at once
PRETRAIN = ["--stage", "pretrain", "--steps=3", "--batch_size=4", "--seq_len=64", "--dtype=float32",
            "--warmup_steps=1", "--log_every=1", "--sample_every=0"]
SFT = ["--stage", "sft", "--steps=3", "--batch_size=4", "--n_per_task=4", "--dtype=float32",
       "--warmup_steps=1", "--log_every=1", "--sample_every=0", "--init=checkpoints/tiny-base.pt"]


def train(out_dir, args, nproc=1, check=True):
    """train.py with args and --out_dir, on nproc processes (1: plain python, no torchrun)."""
    launcher = [sys.executable] if nproc == 1 else [*TORCHRUN, f"--nproc_per_node={nproc}"]
    cmd = [*launcher, "train.py", *args, f"--out_dir={out_dir}"]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def override(args, **keys):
    """args with --key=value for each of keys, in place of the key's earlier value if any."""
    return [a for a in args if a.partition("=")[0][2:] not in keys] + [f"--{k}={v}" for k, v in keys.items()]


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(out_dir):
    return torch.load(Path(out_dir) / "ckpt.pt", weights_only=True)["model"]


def assert_same_weights(got, expected, lr=1e-3, atol=1e-5):
    """The weights of two runs that differ only in float rounding (summation order): equal to 1e-5
    relative and atol absolute, but for a few weights whose gradient is ~0. Adam divides each gradient
    by its own running size, so rounding can move such a weight by a part of one step (lr; measured:
    1 of 180,224 in a pretraining tensor by 1.2e-5 = 0.012 lr on an AVX-512 CPU, 2 of 114,688 in a GRPO
    tensor by 4e-6 = 0.2 lr). At most 1 in 10,000 weights of a tensor may differ more, and none by a
    whole step. lr: the run's (pretraining's default here)."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        off = ~torch.isclose(got[key], value, rtol=1e-5, atol=atol)
        assert off.sum() <= value.numel() // 10_000, (key, int(off.sum()))
        assert (got[key] - value).abs().max() < lr, key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process pretraining run every 2-process variant must equal."""
    out = tmp_path_factory.mktemp("pretrain-1")
    train(out, PRETRAIN)
    return out


# -- the stages on 2 processes equal 1 -----------------------------------------------------------


@pytest.mark.parametrize("micro_batch", [0, 1])  # 2 rows per process in one pass, or 1 + 1 accumulated
def test_pretraining_on_2_processes_equals_1(one_process, micro_batch, tmp_path):
    done = train(tmp_path, override(PRETRAIN, micro_batch=micro_batch), nproc=2)
    assert losses(tmp_path) == pytest.approx(losses(one_process), rel=1e-5)  # 3 rows: rank 0 alone logs
    assert_same_weights(weights(tmp_path), weights(one_process))
    # rank 0 alone prints (the config once, the last line once); the global batch is the same
    assert done.stdout.count("stage pretrain on cpu (rank 0 of 2 processes); config:") == 1
    assert done.stdout.count("done: 3 steps") == 1
    assert "batch_size = 4" in done.stdout


@pytest.mark.parametrize("lora", [[], ["--lora_r=4"]], ids=["full", "lora"])
def test_sft_on_2_processes_equals_1(lora, tmp_path):
    train(tmp_path / "one", [*SFT, *lora])
    train(tmp_path / "two", [*SFT, *lora], nproc=2)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"))  # LoRA: merged into "model"


def test_a_batch_that_does_not_split_is_refused_before_anything_is_written(tmp_path):
    done = train(tmp_path / "run", override(PRETRAIN, batch_size=3), nproc=2, check=False)
    assert done.returncode != 0 and not (tmp_path / "run").exists()
    message = ("train.py: error: 3 rows per step (--batch_size) do not split evenly over 2 processes; "
               "use a multiple of 2")
    assert done.stderr.count(message) == 1  # rank 0 says it; rank 1 exits quietly


# -- stopped by a signal on 2 processes, resumed on 1 ----------------------------------------------


def test_a_run_stopped_by_a_signal_resumes_on_another_number_of_processes(tmp_path):
    """SIGTERM to torchrun once step 3 is logged (so the checkpoint of step 2 is complete; in practice
    the signal lands while rank 0 writes step 3's); resume on 1 process; end at step K = the
    checkpoint's step + 2: the weights and the resumed steps' losses equal those of a 1-process K-step
    run that never stopped. --decay_steps fixes the LR schedule: --steps only says where a run stops."""
    run = override(PRETRAIN, decay_steps=8, ckpt_every=1)
    log = tmp_path / "stopped" / "metrics.jsonl"
    cmd = [*TORCHRUN, "--nproc_per_node=2", "train.py", *override(run, steps=1000, out_dir=tmp_path / "stopped")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.time() < deadline, "the run ended before step 3"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # a failed assertion above: stop torchrun, which stops its processes
            proc.terminate()
            proc.wait(timeout=60)
    assert proc.returncode != 0
    # ckpt.pt is never half-written (a .tmp file, then a rename): it loads, at a step already logged
    step = torch.load(tmp_path / "stopped" / "ckpt.pt", weights_only=True)["step"]
    assert 2 <= step <= len(log.read_text().splitlines())
    end = step + 2
    train(tmp_path / "stopped", override(run, steps=end, resume=True))
    train(tmp_path / "straight", override(run, steps=end))
    assert_same_weights(weights(tmp_path / "stopped"), weights(tmp_path / "straight"))
    assert losses(tmp_path / "stopped")[-2:] == pytest.approx(losses(tmp_path / "straight")[-2:], rel=1e-5)


# -- the helpers on one process ------------------------------------------------------------------


def test_on_one_process_every_helper_is_a_no_op():
    assert (distributed.world(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.my_rows(6) == slice(0, 6)
    model = torch.nn.Linear(2, 2)
    assert distributed.ddp(model) is model
    assert distributed.all_sum(torch.tensor(3.0)) == 3.0 and distributed.all_gather_objects("a") == ["a"]


def test_split_checks_and_a_process_share_in_micro_batches():
    distributed.check_split(8, "rows", n=4)
    with pytest.raises(ValueError, match="^6 rows do not split evenly over 4 processes; use a multiple of 4$"):
        distributed.check_split(6, "rows", n=4)
    # rank 1 of 2 of an 8-row batch, --micro_batch=3: rows 4..8 in passes of 3 and 1
    assert row_slices(4, 3, start=4) == [slice(4, 7), slice(7, 8)]


def test_only_rank_0_reports_user_errors_and_every_rank_its_own_failure(monkeypatch, tmp_path):
    """Under torchrun (RANK set before the process group exists): rank 1 exits 1 quietly on a user
    error (rank 0 reports the same one) and on an interrupt, and names itself on any other error."""
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()
    for error in (ValueError("bad key"), OSError("no such file"), KeyboardInterrupt()):
        with pytest.raises(SystemExit) as info, report_what_was_kept("train.py", tmp_path):
            raise error
        assert info.value.code == 1
    with pytest.raises(SystemExit) as info, one_line_errors("train.py"):
        raise ValueError("bad key")
    assert info.value.code == 1
    with pytest.raises(SystemExit, match=r"^train.py \(rank 1\): error: RuntimeError: out of memory"):
        with report_what_was_kept("train.py", tmp_path):
            raise RuntimeError("out of memory")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit, match="^train.py: error: bad key$"):
        with one_line_errors("train.py"):
            raise ValueError("bad key")


def test_rank_1_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # put back after the test
    distributed.print_only_on_main()
    print("from rank 1")
    sys.stdout.close()
    monkeypatch.undo()
    assert "from rank 1" not in capsys.readouterr().out
