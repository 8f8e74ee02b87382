"""
Exercise 02 (~20 min): rotary position embeddings (RoPE), LLaDA's only notion of position.

Replaces model.rope_tables and model.apply_rope. Fill in both functions, then:
    python -m exercises check 02
    python -m exercises run 02 --stage sft --steps=50   # fine-tune with YOUR RoPE in every layer
"""

import torch


def rope_tables(T, head_dim, theta, device):
    """cos and sin tables for positions 0..T-1, each (T, Dh) in float32 (RoPE, Su et al. 2021, in
    Llama's half-split layout, which LLaDA keeps).

        inv_freq[i] = 1 / theta^(2i / Dh),  i = 0 .. Dh/2 - 1     one frequency per pair of dimensions
        angle[t, i] = t * inv_freq[i]                             (T, Dh/2)
        cos = cos([angle, angle]), sin = sin([angle, angle])      angles concatenated twice: (T, Dh)

    Example: T = 2, Dh = 4, theta = 10000: inv_freq = [1, 0.01], angle = [[0, 0], [1, 0.01]];
             cos = [[1, 1, 1, 1], [0.5403, 0.99995, 0.5403, 0.99995]]

    Hint: torch.arange(0, head_dim, 2, device=device, dtype=torch.float32), torch.outer, torch.cat.
    """
    raise NotImplementedError("exercise 02: write rope_tables")


def apply_rope(x, cos, sin):
    """Rotate each pair (x_i, x_{i+Dh/2}) of every position's vector by that position's angle.

    x (B, H, T, Dh); cos, sin (T, Dh) from rope_tables -> (B, H, T, Dh), in x's dtype.
    With the halves x1 = x[..., :Dh/2] and x2 = x[..., Dh/2:]:

        out = x * cos + rotate_half(x) * sin,      rotate_half(x) = [-x2, x1]

    i.e. out_i = x_i cos a - x_{i+Dh/2} sin a and out_{i+Dh/2} = x_{i+Dh/2} cos a + x_i sin a: a
    2-D rotation of each pair. Rotations keep lengths, and afterwards q . k depends only on the
    distance between the query's and the key's positions.

    Example: Dh = 2, angle pi/2 (cos 0, sin 1): x = [1, 0] -> [0, 1]; x = [0, 1] -> [-1, 0].

    Precision: rotate in float32 (x.float()) and return .to(x.dtype).
    Hint: x.chunk(2, dim=-1); the (T, Dh) tables broadcast against (B, H, T, Dh).
    """
    raise NotImplementedError("exercise 02: write apply_rope")
