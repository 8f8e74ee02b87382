"""
Experiment: how much does the prompt mask rate p move the one-step log-probs diffu-GRPO is built on?

    python -m exercises.experiment_prompt_mask            # ~1 minute on 2 CPU cores
    python -m exercises.experiment_prompt_mask --questions_per_task=1 --masks=2 --gen_length=32

d1's one-step estimator (d1 paper, Sec. 3.2; exercise 11) reads log pi(o_k | q) from one forward
pass in which the completion is fully masked and each prompt token is masked with probability p
(d1's runs: 0.15), with a new mask for each of the mu inner updates. Masking hides information, so
it should lower the log-probs, and two masks give two different views of the same completion.
This samples completions from checkpoints/tiny-sft.pt once (as GRPO's rollouts), then for p = 0,
0.15 and 0.5 computes every completion's log-probs under `masks` prompt masks (estimators.prompt_mask
with j = 0 .. masks - 1) and prints:
    log-prob / token       the mean log-prob of the loss tokens (up to the first EOS)
    std across masks       of a completion's summed log-prob, averaged over completions
    token |delta|          mean |log p_j - log p_j+1| per token between consecutive masks
    rank corr. with p=0    do the masked views rank the completions as the clean prompt does?

Predict first: how do these grow from p = 0.15 to p = 0.5? Is 0.15 a mild regulariser, or does it
change what the policy is asked to predict?
"""

import sys
import time
from dataclasses import dataclass

import torch

from common import autocast, cli, one_line_errors
from estimators import chunked_logps, prompt_mask
from grpo import completion_mask

from .experiment_remasking import load, questions, rollout


@dataclass
class PromptMaskConfig:
    """The one-step log-probs under prompt masks of rate p."""

    ckpt: str = "checkpoints/tiny-sft.pt"  # the model GRPO starts from
    questions_per_task: int = 6  # x 3 tasks = 18 questions
    group_size: int = 2  # completions per question
    gen_length: int = 96  # GRPO's default
    rates: tuple[float, ...] = (0.0, 0.15, 0.5)  # prompt mask rates p to compare
    masks: int = 8  # prompt masks per rate (mu would be 4 in the tiny run)
    seed: int = 0  # the sampler's noise and the masks' seed
    dtype: str = "auto"  # autocast dtype, as training runs (auto: bf16 where this device runs it fast)


def spearman(a, b):
    """Rank correlation of two (N,) tensors."""
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return ((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()).clamp(min=1e-12)).item()


def logps_under_masks(model, ro, p, masks, seed, dtype):
    """(masks, N, C) one-step log-probs of every completion token, mask j = estimators.prompt_mask(seed, 0, j)."""
    device = next(model.parameters()).device
    out = []
    for j in range(masks):
        is_masked = prompt_mask(seed, 0, j, ro.prompt_ids.shape, p, device)  # (N, P)
        with autocast(device, dtype):
            out.append(chunked_logps(model, ro, is_masked, model.config.mask_token_id, chunk_size=16))
    return torch.stack(out).float()


def main(argv):
    cfg = cli(PromptMaskConfig, argv)
    model, tok = load(cfg.ckpt)
    items = questions(cfg.questions_per_task)
    tick = time.time()
    ro = rollout(model, tok, items, cfg.group_size, cfg.gen_length, 0.9, "random", cfg.seed, cfg.dtype)
    loss_mask = completion_mask(ro.completion_ids, tok.eos_id).cpu()  # (N, C): GRPO's loss tokens
    print(f"{len(ro.texts)} completions of {len(items)} questions sampled in {time.time() - tick:.1f} s; "
          f"{cfg.masks} prompt masks per rate\n")
    print(f"{'p':>5} {'log-prob / token':>17} {'std across masks':>17} {'token |delta|':>14} "
          f"{'rank corr. with p=0':>20}")
    clean, rows = None, []
    for p in cfg.rates:
        logp = logps_under_masks(model, ro, p, cfg.masks, cfg.seed, cfg.dtype).cpu() * loss_mask  # (K, N, C)
        sequences = logp.sum(-1)  # (K, N)
        clean = sequences[0] if clean is None and p == 0 else clean
        delta = (logp[1:] - logp[:-1]).abs().sum() / (loss_mask.sum() * max(1, cfg.masks - 1))
        row = {"p": p, "logp per token": (logp.sum() / (loss_mask.sum() * cfg.masks)).item(),
               "std across masks": sequences.std(0).mean().item() if cfg.masks > 1 else 0.0,
               "token delta": delta.item(),
               "rank corr": spearman(sequences.mean(0), clean) if clean is not None else float("nan")}
        rows.append(row)
        print(f"{p:>5.2f} {row['logp per token']:>17.3f} {row['std across masks']:>17.3f} "
              f"{row['token delta']:>14.3f} {row['rank corr']:>20.3f}")
    print("\nGRPO's ratio compares old and new log-probs under the SAME mask j; the spread above is what makes "
          "the mu inner updates see different views of each prompt.")
    return rows


if __name__ == "__main__":
    with one_line_errors("experiment_prompt_mask"):
        main(sys.argv[1:])
