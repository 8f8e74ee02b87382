"""
Exercise 13 (~20 min): a LoRA layer: a low-rank update that starts at zero, switches off, and merges.

Replaces lora.LoRALinear (add_lora, adapters_off and merge_lora all use it). Fill it in, then:
    python -m exercises check 13
    python -m exercises run 13 --stage grpo --lora_r=8 --steps=5   # GRPO trains YOUR adapters
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """LoRA (Hu et al. 2021) around a frozen, bias-free nn.Linear, as d1 fine-tunes LLaDA-8B:

        y = x W^T + (alpha / r) * dropout(x) A^T B^T          A (r, in), B (out, r)

    __init__(linear, r, alpha, dropout, generator):
      - self.weight = linear.weight: the SAME Parameter (same checkpoint key, no copy), frozen
        with requires_grad_(False); a layer with a bias: raise ValueError (LLaDA has none)
      - self.lora_A = nn.Parameter (r, in): uniform in [-1/sqrt(in), 1/sqrt(in)], drawn with
        `generator` (torch.rand(r, in, generator=generator) * 2 - 1, times the bound)
      - self.lora_B = nn.Parameter (out, r) of zeros: B A = 0, so training starts at the base model
      - self.scaling = alpha / r;  self.dropout = nn.Dropout(dropout);  self.enabled = True
      (A and B on the weight's device and dtype.)
    forward(x): (..., in) -> (..., out); with self.enabled False just x W^T: the base model, which
      is GRPO's reference policy (lora.adapters_off switches it).
    merged_weight(): W + (alpha / r) B A, shape (out, in): a plain layer with this weight computes
      the same function (how lora.merge_lora exports a trained adapter).

    Example: in = out = 1, W = [[2]], A = [[1]], B = [[3]], r = 1, alpha = 2:
             y = 2x + 2 * 3x = 8x, and merged_weight() = [[8]].
    Hint: F.linear(x, W) is x W^T.
    """

    def __init__(self, linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0, generator=None):
        super().__init__()
        raise NotImplementedError("exercise 13: write LoRALinear.__init__")

    def forward(self, x):
        raise NotImplementedError("exercise 13: write LoRALinear.forward")

    def merged_weight(self):
        raise NotImplementedError("exercise 13: write LoRALinear.merged_weight")
