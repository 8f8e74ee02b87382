"""
Checks of exercises 01-03 (model.py): RMSNorm, rotary position embeddings, attention with a padding
mask. Each check compares the student's code with the project's on random and edge-case inputs;
`mistakes` name the wrong outputs students most often produce, so the message can say which one.
"""

import math

import torch

import model as ref
from .check import Call, attempt, expect, require


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# -----------------------------------------------------------------------------
# 01 RMSNorm


def check_rmsnorm(s):
    """RMSNorm(dim, eps) has exactly one parameter, `weight` of shape (dim,); with a random weight its
    forward matches model.RMSNorm on float32 inputs of shape (4, dim) and (2, 3, 5, dim), on tiny
    values (1e-3, where eps matters) and on float16 values near 1,000 (whose squares overflow float16:
    compute in float32)."""
    g = _gen(0)
    for dim, eps in ((8, 1e-5), (16, 1e-6)):
        norm = attempt(s.RMSNorm, f"RMSNorm(dim={dim}, eps={eps})", dim, eps)
        params = {name: tuple(p.shape) for name, p in norm.named_parameters()}
        require(params == {"weight": (dim,)},
                f"RMSNorm({dim}, eps={eps}) must have one parameter, `weight` of shape ({dim},); it has {params}",
                hint="self.weight = nn.Parameter(torch.empty(dim)) (the checkpoint's key is `...norm.weight`)")
        reference = ref.RMSNorm(dim, eps)
        weight = torch.randn(dim, generator=g)
        with torch.no_grad():
            norm.weight.copy_(weight)
            reference.weight.copy_(weight)
        inputs = [torch.randn(4, dim, generator=g), torch.randn(2, 3, 5, dim, generator=g),
                  torch.randn(3, dim, generator=g) * 1e-3, (torch.randn(3, dim, generator=g) * 1000).half()]
        for x in inputs:
            call = Call(reference.forward, x, label=f"RMSNorm({dim}, eps={eps}).forward")
            rtol = 2e-3 if x.dtype == torch.float16 else 1e-4
            expect(call, call.run(reference), call.run(norm), rtol=rtol, mistakes=_rmsnorm_mistakes(x, weight, eps))


def _rmsnorm_mistakes(x, weight, eps):
    x32 = x.float()
    ms = x32.pow(2).mean(-1, keepdim=True)
    return {
        "subtracted the mean (that is LayerNorm; RMSNorm only divides by the root mean square)":
            (x32 - x32.mean(-1, keepdim=True)) * torch.rsqrt(x32.var(-1, unbiased=False, keepdim=True) + eps) * weight,
        "added eps outside the square root: use rsqrt(mean(x^2) + eps)": x32 / (ms.sqrt() + eps) * weight,
        "forgot to multiply by self.weight": x32 * torch.rsqrt(ms + eps),
        "computed in the input's precision (float16 squares overflow): upcast with x.float() first":
            x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight,
    }


# -----------------------------------------------------------------------------
# 02 RoPE


def check_rope(s):
    """rope_tables(T, head_dim, theta, device) returns the cos and sin tables of model.rope_tables,
    each (T, Dh), for several T, Dh and theta; apply_rope(x, cos, sin) rotates a (B, H, T, Dh) tensor
    as model.apply_rope does (pairs x_i, x_{i+Dh/2}), keeps the input dtype (bfloat16 in, bfloat16
    out), keeps each vector's length, and leaves position 0 unchanged."""
    for T, Dh, theta in ((5, 4, 10000.0), (7, 8, 500000.0), (3, 2, 10.0)):
        call = Call(ref.rope_tables, T, Dh, theta, "cpu")
        expect(call, call.run(ref.rope_tables), call.run(s.rope_tables), what=("cos", "sin"),
               mistakes=_table_mistakes(T, Dh, theta))
    g = _gen(1)
    cos, sin = ref.rope_tables(6, 8, 10000.0, "cpu")
    x = torch.randn(2, 3, 6, 8, generator=g)
    call = Call(ref.apply_rope, x, cos, sin)
    got = call.run(s.apply_rope)
    same_shape = lambda: isinstance(got, torch.Tensor) and got.shape == x.shape  # noqa: E731
    expect(call, call.run(ref.apply_rope), got, mistakes=_rotation_mistakes(x, cos, sin), properties=[
        (lambda: same_shape() and torch.allclose(got.norm(dim=-1), x.norm(dim=-1), rtol=1e-4),
         "a rotation keeps every vector's length; yours changes it"),
        (lambda: same_shape() and torch.allclose(got[:, :, 0], x[:, :, 0], atol=1e-6),
         "position 0 has angle 0, so it must come out unchanged")])
    x16 = x.bfloat16()
    call = Call(ref.apply_rope, x16, cos, sin)
    expect(call, call.run(ref.apply_rope), call.run(s.apply_rope), exact_dtype=True, atol=1e-2, rtol=1e-2,
           hint="compute in float32 (x.float()), then cast back with .to(x.dtype)")


def _table_mistakes(T, Dh, theta):
    def tables(inv_freq, positions, interleave=False):
        angles = torch.outer(positions, inv_freq)
        emb = angles.repeat_interleave(2, dim=-1) if interleave else torch.cat([angles, angles], dim=-1)
        return emb.cos(), emb.sin()

    inv_freq = 1.0 / theta ** (torch.arange(0, Dh, 2).float() / Dh)
    positions = torch.arange(T).float()
    return {
        "used every index in the exponent (arange(Dh)) instead of the even ones (arange(0, Dh, 2))":
            tables(1.0 / theta ** (torch.arange(Dh).float()[: Dh // 2] / Dh), positions),
        "repeated each angle twice in a row (interleaved layout); LLaDA concatenates the two halves": tables(
            inv_freq, positions, interleave=True),
        "counted positions from 1: the first token is position 0": tables(inv_freq, positions + 1),
    }


def _rotation_mistakes(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    even, odd = x[..., 0::2], x[..., 1::2]
    interleaved = torch.stack([-odd, even], dim=-1).flatten(-2)
    return {
        "rotated neighbouring pairs (x0, x1), (x2, x3), ...; LLaDA pairs x_i with x_(i + Dh/2) (the two halves)":
            x * cos + interleaved * sin,
        "flipped the sign in rotate_half: it is [-x2, x1], not [x2, -x1]": x * cos + torch.cat([x2, -x1], -1) * sin,
        "swapped cos and sin": x * sin + torch.cat([-x2, x1], -1) * cos,
    }


# -----------------------------------------------------------------------------
# 03 attention with a padding mask


def check_attention(s):
    """eager_attention(q, k, v, key_mask) matches model.eager_attention on (B, H, T, Dh) inputs with
    key_mask None, with a left-padded and a right-padded row; changing the q, k, v of padded KEYS
    changes no output row of the real tokens, and with no mask the first query sees the last key
    (no causal mask)."""
    g = _gen(2)
    B, H, T, Dh = 3, 2, 5, 4
    q, k, v = (torch.randn(B, H, T, Dh, generator=g) for _ in range(3))
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[1, :2] = False  # left padding, as eval.complete builds prompts
    key_mask[2, -1] = False  # right padding
    for mask in (None, key_mask):
        call = Call(ref.eager_attention, q, k, v, mask)
        expect(call, call.run(ref.eager_attention), call.run(s.eager_attention),
               mistakes=_attention_mistakes(q, k, v, mask))
    call = Call(ref.eager_attention, q, k, v, key_mask)
    k2, v2 = k.clone(), v.clone()
    k2[~key_mask[:, None, :, None].expand_as(k)] = 9.0  # garbage in every padded key and value
    v2[~key_mask[:, None, :, None].expand_as(v)] = 9.0
    before = call.run(s.eager_attention)
    after = attempt(s.eager_attention, call.text, q, k2, v2, key_mask)
    real = key_mask[:, None, :, None].expand_as(q)
    require(torch.allclose(before[real], after[real], atol=1e-5), "changing the keys and values of padded "
            "positions changed the outputs of real tokens: padded keys must get zero attention", call,
            hint="fill the scores of padded keys (key_mask[:, None, None, :] False) with a very negative number")


def _attention_mistakes(q, k, v, key_mask):
    def attend(scale, mask=None, causal=False):
        scores = q @ k.transpose(-2, -1) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        if causal:
            scores = scores.masked_fill(torch.ones(q.size(2), q.size(2)).triu(1).bool(), torch.finfo(scores.dtype).min)
        return scores.softmax(-1) @ v

    scale = 1 / math.sqrt(q.size(-1))
    keys = None if key_mask is None else key_mask[:, None, None, :]
    found = {"forgot to divide the scores by sqrt(Dh)": attend(1.0, keys),
             "used a causal mask: a diffusion LM attends in both directions": attend(scale, causal=True)}
    if key_mask is not None:
        found["masked the padded QUERIES (key_mask[:, None, :, None]); mask the padded KEYS: "
              "key_mask[:, None, None, :]"] = attend(scale, key_mask[:, None, :, None])
        found["ignored key_mask"] = attend(scale)
    return found
