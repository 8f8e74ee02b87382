"""
LoRA (Hu et al. 2021): fine-tune a frozen linear layer W through a low-rank update,
    y = x W^T + (alpha / r) * dropout(x) A^T B^T,      A: (r, in), B: (out, r), B starts at zero,
so training starts exactly at the base model and only r * (in + out) numbers per layer learn.
d1 fine-tunes LLaDA-8B this way (SFT: r 128, alpha 256 on q/k/v; RL: r 128, alpha 64 on q/k/v/up).

    from lora import add_lora, adapters_off, merge_lora
    add_lora(model, targets=("q_proj", "k_proj", "v_proj", "up_proj"), r=8, alpha=16)
    ...train (only lora_A / lora_B require grad)...
    with adapters_off(model):            # the base model again: GRPO's reference policy
        ref_logits = model(x)
    merge_lora(model)                    # fold B A into W: plain nn.Linear layers, official keys

The wrapped layer keeps its weight under the same name ("...q_proj.weight"), so the official keys
are untouched and the adapters add "...q_proj.lora_A" / "...q_proj.lora_B" beside them.
"""

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

LLADA_LINEARS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


class LoRALinear(nn.Module):
    """A frozen nn.Linear (no bias, as in LLaDA) plus a trainable low-rank update."""

    def __init__(self, linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0, generator=None):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("LoRALinear expects a bias-free linear layer (LLaDA has no biases)")
        out_features, in_features = linear.weight.shape
        self.weight = linear.weight  # the same Parameter: same key, no copy
        self.weight.requires_grad_(False)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.enabled = True
        # A ~ Kaiming-uniform like nn.Linear's default, B = 0: the update starts at exactly zero.
        # The adapters are float32 even on a bf16 base (LLaDA-8B): with d1's lr of 3e-6, an AdamW
        # step is far below bf16's resolution (8 bits of mantissa) and would round away to nothing.
        bound = 1 / math.sqrt(in_features)
        A = (torch.rand(r, in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(A.to(self.weight.device))  # (r, in) float32
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=self.weight.device))  # (out, r) float32

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.enabled:
            A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)  # computed in the input's dtype
            y = y + F.linear(F.linear(self.dropout(x), A), B) * self.scaling
        return y

    def merged_weight(self):
        """W + (alpha / r) B A, summed in float32 and returned in W's dtype: (out, in)."""
        return (self.weight.float() + (self.lora_B @ self.lora_A) * self.scaling).to(self.weight.dtype)


def add_lora(model, targets=("q_proj", "k_proj", "v_proj", "up_proj"), r=8, alpha=16.0, dropout=0.0, seed=0):
    """Freeze every parameter of `model`, then wrap each linear named in `targets` (LLaDA names)."""
    unknown = set(targets) - set(LLADA_LINEARS)
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {sorted(unknown)}; LLaDA's linear layers are {LLADA_LINEARS}")
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for block in model.transformer.blocks:
        for name in targets:
            setattr(block, name, LoRALinear(getattr(block, name), r, alpha, dropout, generator))
    return model


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextmanager
def adapters_off(model):
    """Temporarily run the base model (all adapters disabled)."""
    layers = lora_layers(model)
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer in layers:
            layer.enabled = True


@torch.no_grad()
def merge_lora(model):
    """Replace every LoRALinear by a plain nn.Linear holding W + (alpha/r) B A. Returns the model."""
    for block in model.transformer.blocks:
        for name in LLADA_LINEARS:
            layer = getattr(block, name)
            if isinstance(layer, LoRALinear):
                out_features, in_features = layer.weight.shape
                merged = nn.Linear(in_features, out_features, bias=False, device=layer.weight.device,
                                   dtype=layer.weight.dtype)
                merged.weight.copy_(layer.merged_weight())
                setattr(block, name, merged)
    return model
