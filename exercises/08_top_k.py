"""
Exercise 08 (~15 min): one low-confidence sampler step: commit the k most confident tokens per row.

Replaces diffusion._top_k_per_row (generate() calls it at every step). Fill it in, then:
    python -m exercises check 08
    python -m exercises run 08 --stage grpo --steps=3   # GRPO's rollouts commit with YOUR top-k
"""

import torch


def _top_k_per_row(scores, k):
    """Select the k[b] highest scores of each row b; k differs from row to row.

    In generate() (LLaDA paper, Sec. 2.4) the scores are the confidences of the proposed tokens,
    -inf where nothing may be committed (a token already committed, or right of the current
    block), and k[b] comes from commit_plan. One step then writes the proposals where this is True:

        scores   0.2  0.9  -inf  0.5        k = 2
        chosen   .    X    .     X          -> x = torch.where(chosen, proposals, x)

    scores (B, T) float; k (B,) long -> (B, T) bool with exactly k[b] True in row b, at its highest
    scores. Ties: any choice among equal scores passes (the project keeps the leftmost).

    Example: scores = [[0.2, 0.9, -inf, 0.5], [0.1, 0.3, 0.7, 0.4]], k = [2, 1]
             -> [[False, True, False, True], [False, False, True, False]]

    Hint: torch.topk takes one k for the whole batch, so rank instead:
    order = scores.argsort(dim=-1, descending=True, stable=True); a position's rank is where it
    sits in `order` (scatter torch.arange(T) back through `order`); select rank < k[:, None].
    """
    raise NotImplementedError("exercise 08: write _top_k_per_row")
