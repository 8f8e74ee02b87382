"""
Exercise 01 (~10 min): RMSNorm, the normalisation before every attention block and MLP of LLaDA.

Replaces model.RMSNorm. Fill in the class below, then:
    python -m exercises check 01                        # compare with the project's RMSNorm
    python -m exercises run 01 --stage sft --steps=50   # fine-tune with YOUR RMSNorm in every layer
"""

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation, as LLaDA uses it (LLaDA paper, Nie et al. 2025, Sec. 2):

        RMSNorm(x) = x / sqrt(mean(x^2 over the last dim) + eps) * weight

    Unlike LayerNorm: no mean subtraction, no bias. x (..., D) -> (..., D); weight (D,), one gain
    per feature.

    Example (D = 2, eps = 0, weight = [1, 1]): x = [3, 4] -> mean(x^2) = 12.5 -> [0.8485, 1.1314]

    Precision: compute in float32 (x.float()), cast the normalised x back to x's dtype, THEN
    multiply by the weight (as LLaDA does): in float16, x^2 overflows already for |x| > 256.

    Hint: torch.rsqrt, x.pow(2).mean(-1, keepdim=True). The parameter must be called `weight`
    (the checkpoint's key is "...attn_norm.weight"); create it with nn.Parameter(torch.empty(dim)):
    init_weights() or a checkpoint fills it.
    """

    def __init__(self, dim, eps):
        super().__init__()
        raise NotImplementedError("exercise 01: write RMSNorm.__init__")

    def forward(self, x):
        raise NotImplementedError("exercise 01: write RMSNorm.forward")
