"""
Exercise 04 (~10 min): the forward (noising) process of masked diffusion.

Replaces diffusion.forward_process. Fill it in, then:
    python -m exercises check 04
    python -m exercises run 04 --stage sft --steps=50   # the loss masks with YOUR forward process
"""

import torch

from diffusion import EPS  # 1e-3, LLaDA's smallest mask probability


def forward_process(x0, mask_id, eps=EPS, generator=None):
    """LLaDA's forward process (LLaDA paper, Sec. 2.1): mask every token of row b independently
    with that row's probability p_b.

        t_b ~ U(0, 1)                    one noise level per row, shape (B, 1)
        p_b = (1 - eps) t_b + eps        in [eps, 1]: never 0, so the loss's 1/p stays finite
        is_masked[b, i] = u[b, i] < p_b  u ~ U(0, 1), shape (B, T): probability p_b each
        xt = mask_id where is_masked, else x0

    x0 (B, T) token ids -> xt (B, T), is_masked (B, T) bool, p (B, 1) float.

    Example: x0 = [[5, 6, 7, 8]], t = 0.5 -> p = 0.5005; u = [[0.9, 0.1, 0.7, 0.3]]
             -> is_masked = [[F, T, F, T]], xt = [[5, M, 7, M]]

    Draw the randomness in this order, with `generator` (the check replays your draws):
        t = torch.rand(B, 1, device=x0.device, generator=generator)
        u = torch.rand(B, T, device=x0.device, generator=generator)
    Hint: torch.where(is_masked, mask_id, x0) builds xt without writing into x0.
    """
    raise NotImplementedError("exercise 04: write forward_process")
