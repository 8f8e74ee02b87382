"""GRPO and evaluation on several processes (torchrun, gloo on the CPU): the same numbers as one process.
In process: a rollout row's samples depend on its own generator, prompt and length only (not on the
other rows of its sampler call), so any split of a step's questions samples the same answers. Through
torchrun: 3 GRPO steps on 2 processes log the same metrics and end with the same weights as on 1, and
eval.py --model on 2 processes writes the same generation file as on 1."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as evaluation
import grpo
from diffusion import generate
from eval import complete, left_pad
from tasks_tiny import TINY_TASKS
from tokenizer import Tokenizer
from test_distributed import assert_same_weights

ROOT = Path(__file__).resolve().parent.parent


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- in process: per-row noise ---------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.9, remasking="random"),
                                dict(temperature=0.9, remasking="random", threshold=0.017),
                                dict(temperature=0.9, threshold=0.017, cache="dual")])
def test_a_rows_samples_do_not_depend_on_the_other_rows_of_its_batch(kw, tiny_model):
    """One generator per row: a batch of 4 rows samples what two batches of 2 and four of 1 sample.
    (threshold=0.017, just above the random model's 1/64: rows finish a block after different numbers
    of steps, and a finished row must not draw noise while the others go on.)"""
    model = tiny_model(seed=1)
    prompt = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(0))
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7, [0, 1, 1, 1, 1, 1, 1], [1] * 7])
    kw = dict(steps=12, gen_length=24, block_length=8, **kw)
    seeds = [11, 12, 13, 14]
    whole = generate(model, prompt, attention_mask=attention, generator=generators(seeds), **kw)
    for size in (2, 1):
        parts = [generate(model, prompt[i:i + size], attention_mask=attention[i:i + size],
                          generator=generators(seeds[i:i + size]), **kw) for i in range(0, 4, size)]
        assert torch.equal(torch.cat(parts), whole), size
    again = generate(model, prompt, attention_mask=attention, generator=generators([11, 12, 13, 99]), **kw)
    assert torch.equal(again[:3], whole[:3]) and not torch.equal(again[3], whole[3])  # only row 3 changed


def test_generate_wants_one_generator_per_row(tiny_model):
    with pytest.raises(ValueError, match="3 generators for 2 rows"):
        generate(tiny_model(), torch.zeros(2, 3, dtype=torch.long), steps=4, gen_length=8, block_length=8,
                 generator=generators([1, 2, 3]))


def test_left_pad_to_a_given_length():
    ids, attention = left_pad([[5, 6], [7]], 0, pad_to=4)
    assert ids.tolist() == [[0, 0, 5, 6], [0, 0, 0, 7]] and attention.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]
    assert left_pad([[5, 6], [7]], 0)[0].tolist() == [[5, 6], [0, 7]]  # the longest, by default


def test_a_steps_questions_sample_alike_however_they_are_split(tiny_model):
    """GRPO's rollouts of two processes (one question each, padded to the step's longest prompt, rows
    seeded by (seed, step, question, i)) are those of one process that samples both questions."""
    model, tok, G = tiny_model(tokenizer=True), Tokenizer.tiny(), 3
    questions = [(TINY_TASKS["arith"], TINY_TASKS["arith"].examples("train", 1)[0]),
                 (TINY_TASKS["countdown"], TINY_TASKS["countdown"].examples("train", 1)[0])]
    cfg = grpo.GRPOConfig()
    P = grpo.prompt_length(cfg, tok, questions)

    def roll(qs):  # the rollout of questions qs (their numbers in the step)
        return complete(model, tok, [questions[q] for q in qs for _ in range(G)], gen_length=8, block_length=8,
                        steps=4, temperature=1.0, remasking="random", prompt="rl", pad_to=P,
                        generator=grpo.rollout_generators(7, 2, qs, G, "cpu"))

    one = roll([0, 1])
    two = [roll([0]), roll([1])]
    lengths = [len(tok.chat(task.rl_prompt(ex))) for task, ex in questions]
    assert lengths[0] != lengths[1] and one.prompt_ids.size(1) == P == max(lengths)
    assert [part.prompt_ids.size(1) for part in two] == [P, P]  # the shorter question's too
    assert torch.equal(one.completion_ids, torch.cat([part.completion_ids for part in two]))
    assert one.texts == two[0].texts + two[1].texts
    assert len(set(one.texts)) > 1  # the G rows of a question sample differently


def test_tiny_modes_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="run in one process: start them with python, not torchrun"):
        evaluation.main(["--ckpt", str(ROOT / "checkpoints/tiny-sft.pt")])


# -- through torchrun: 2 processes vs 1 ------------------------------------------------------------


def torchrun(n, *args):
    """python -m torch.distributed.run --nproc_per_node=n ARGS, on a free port, one thread a process
    (the same arithmetic in both runs); fails the test on an error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                           f"--master_port={port}", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{args} on {n} processes failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


GRPO = ["train.py", "--stage", "grpo", "--steps=3", "--questions_per_step=2", "--group_size=3", "--gen_length=32",
        "--diffusion_steps=16", "--mu=2", "--logp_chunk=2", "--sample_every=0", "--log_every=1", "--warmup_steps=1",
        "--dtype=float32", "--tasks=arith", "--device=cpu"]


def assert_same_grpo_weights(got, expected):
    """test_distributed.assert_same_weights at GRPO's learning rate, whose steps are 50x smaller than
    pretraining's: 1e-7 absolute."""
    assert_same_weights(got, expected, lr=grpo.GRPOConfig.lr, atol=1e-7)


def test_grpo_on_two_processes_is_grpo_on_one(tmp_path):
    """3 steps, 2 questions x 3 rows a step: rank 0 samples question 0, rank 1 question 1; the loss is
    split in chunks of 2 rows (gradient accumulation under DDP). Every logged number but the seconds,
    and every final weight, agree to float rounding (measured: ~5e-7 relative; the loss, a sum of
    terms of size ~1 that nearly cancel to ~1e-2, to ~1e-7 absolute: the summation order differs)."""
    runs = {n: tmp_path / f"n{n}" for n in (1, 2)}
    out = {n: torchrun(n, *GRPO, f"--out_dir={out_dir}") for n, out_dir in runs.items()}
    assert out[2].count("grpo step") == 3  # rank 0 alone prints
    logs = {n: [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
            for n, out_dir in runs.items()}
    assert len(logs[1]) == len(logs[2]) == 3
    for one, two in zip(logs[1], logs[2]):
        assert one.keys() == two.keys()
        for key in one:
            if not key.startswith("seconds"):
                assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), (one["step"], key)
    assert any(row["loss"] != 0 for row in logs[1])  # the runs learn something to compare
    weights = {n: torch.load(out_dir / "ckpt.pt", weights_only=False)["model"] for n, out_dir in runs.items()}
    assert_same_grpo_weights(weights[2], weights[1])
    start = torch.load(ROOT / "checkpoints/tiny-sft.pt", weights_only=False)["model"]
    assert not torch.equal(weights[1]["model.transformer.wte.weight"], start["model.transformer.wte.weight"])


def test_eval_on_two_processes_writes_one_processs_file(tmp_path):
    """6 GSM8K-format questions in batches of 2 on 2 processes: rank 0 takes batches 0 and 2, rank 1
    batch 1 (and nothing in the last round); the file lists the answers in test-set order, the same as
    one process's. (The tiny model reads GSM8K prompts of 230-247 tokens: gen_length 8 fits its 256.)"""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_llada import write_gsm8k
    data = write_gsm8k(tmp_path / "gsm8k.jsonl", 6, seed=1)  # all 6: torchrun reads --n as its own option
    files = {n: tmp_path / f"gens{n}.json" for n in (1, 2)}
    for n, path in files.items():
        torchrun(n, "eval.py", "--model=checkpoints/tiny-sft.pt", "--task=gsm8k", f"--data={data}", "--gen_length=8",
                 "--batch_size=2", f"--out={path}", "--device=cpu", "--dtype=float32")
    one, two = (json.loads(files[n].read_text()) for n in (1, 2))
    assert len(one["generations"]) == 6 and two["generations"] == one["generations"]
    assert len({g["generations"] for g in one["generations"]}) > 1  # real answers, not one repeated string
    assert {k: v for k, v in two.items() if k != "metrics"} == {k: v for k, v in one.items() if k != "metrics"}
