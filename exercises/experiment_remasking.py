"""
Experiment: how often do a question's G completions carry no learning signal, under d1's
low-confidence remasking and under random remasking?

    python -m exercises.experiment_remasking              # ~1-2 minutes on 2 CPU cores
    python -m exercises.experiment_remasking --questions_per_task=1 --group_size=2 --gen_length=32

GRPO learns only from differences inside a group: A_i = r_i - mean(r) (d1 paper, Sec. 3.2,
Algorithm 1 line 6; exercise 10). When all G completions of a question get the same reward, every
advantage is 0 and the group teaches nothing. This samples G completions of the same questions
from checkpoints/tiny-sft.pt exactly as GRPO's rollouts do (eval.complete with the RL prompt, blocks
of 32, two tokens per step), with low-confidence remasking (d1's: commit the most confident tokens)
at two temperatures and with random remasking (the tiny default, deviation 5 in grpo.py), and
prints, per setting: the share of zero-std groups, the mean reward, the mean within-group std of
the rewards, and how many distinct completions a group holds.

Predict first: which setting gives the most zero-std groups, and does a higher temperature fix it?
(The README's "Honest notes" give the numbers of a longer run.)
"""

import sys
import time
from dataclasses import dataclass

import torch

from checkpoint import load_model
from common import autocast, cli, one_line_errors, pick_device
from eval import complete
from grpo import group_advantages
from tasks_tiny import get_tiny_tasks
from tokenizer import Tokenizer


@dataclass
class RemaskingConfig:
    """Zero-std groups under low-confidence and random remasking."""

    ckpt: str = "checkpoints/tiny-sft.pt"  # the model GRPO starts from
    questions_per_task: int = 3  # x 3 tasks = 9 questions, as one GRPO step
    group_size: int = 6  # G, d1's
    gen_length: int = 96  # GRPO's default
    temperatures: tuple[float, ...] = (0.9, 1.5)  # for low-confidence remasking; random runs at the first
    seed: int = 0  # the sampler's noise
    dtype: str = "auto"  # autocast dtype, as training runs (auto: bf16 where this device runs it fast)


def load(ckpt):
    """The model (eval mode, on the best device) and the tiny tokenizer."""
    model, _ = load_model(ckpt, device=pick_device("auto"))
    return model.eval(), Tokenizer.tiny()


def questions(per_task):
    """The first `per_task` training questions of each tiny task: [(task, example)]."""
    return [(task, ex) for task in get_tiny_tasks("all") for ex in task.examples("train", per_task)]


def rollout(model, tok, items, G, gen_length, temperature, remasking, seed, dtype):
    """G completions of every item, as GRPO's rollouts (line 5 of Algorithm 1): eval.Completions."""
    device = next(model.parameters()).device
    with autocast(device, dtype):
        return complete(model, tok, [item for item in items for _ in range(G)], gen_length=gen_length,
                        steps=gen_length // 2, temperature=temperature, remasking=remasking,
                        generator=torch.Generator(device=device).manual_seed(seed), prompt="rl")


def group_stats(ro, G):
    """The table's numbers for one rollout of questions x G completions."""
    advantages = group_advantages(ro.reward, G).view(-1, G)  # (questions, G)
    rewards = ro.reward.view(-1, G)
    distinct = [len(set(ro.texts[i:i + G])) for i in range(0, len(ro.texts), G)]
    return {"zero-std groups": (advantages.abs().sum(1) == 0).float().mean().item(),
            "mean reward": rewards.mean().item(),
            "within-group std": rewards.std(1).mean().item(),
            "distinct texts": sum(distinct) / len(distinct)}


def main(argv):
    cfg = cli(RemaskingConfig, argv)
    model, tok = load(cfg.ckpt)
    items = questions(cfg.questions_per_task)
    settings = [("low_confidence", t) for t in cfg.temperatures] + [("random", cfg.temperatures[0])]
    print(f"{len(items)} questions x G={cfg.group_size} completions of {cfg.gen_length} tokens, from {cfg.ckpt}\n")
    print(f"{'remasking':<16} {'temp':>5} {'zero-std groups':>16} {'mean reward':>12} {'within-group std':>17} "
          f"{'distinct / G':>13} {'seconds':>8}")
    rows = []
    for remasking, temperature in settings:
        tick = time.time()
        ro = rollout(model, tok, items, cfg.group_size, cfg.gen_length, temperature, remasking, cfg.seed, cfg.dtype)
        row = group_stats(ro, cfg.group_size)
        rows.append(row)
        print(f"{remasking:<16} {temperature:>5.2f} {row['zero-std groups']:>16.2f} {row['mean reward']:>12.3f} "
              f"{row['within-group std']:>17.3f} {row['distinct texts']:>8.1f} / {cfg.group_size:<2} "
              f"{time.time() - tick:>8.1f}")
    print("\nA zero-std group has advantage 0 for every completion: GRPO's surrogate gets no gradient from it.")
    return rows


if __name__ == "__main__":
    with one_line_errors("experiment_remasking"):
        main(sys.argv[1:])
