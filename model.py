"""
The LLaDA masked-diffusion transformer, written out in one file.

LLaDA is a Llama-style transformer with two differences that make it a *diffusion* language
model rather than an autoregressive one:
  1. attention is bidirectional (no causal mask): every position sees every other position;
  2. it is trained to fill in [MASK] tokens, and the logit at position i predicts the token AT
     position i (no shift by one as in GPT).
Everything else is the familiar recipe: RMSNorm, rotary position embeddings (RoPE), SwiGLU MLP,
no biases, an untied output head. The parameter names below are the official checkpoint's, so
the same class runs a 3M-parameter classroom model and the 8B checkpoint (LLaDA paper, Nie et al.
2025, arXiv 2502.09992: Sec. 2 and Table 5 give the architecture; the released config.json the sizes).

    from model import Config, Model
    model = Model(Config.preset("tiny")); model.init_weights()
    logits = model(input_ids)                      # (B, T, V)
    logits = model(x, mask, kv_cache=cache.fill())  # the same, and records every layer's K, V (KVCache)
    model = load_pretrained("LLaDA-8B-Instruct")   # checkpoint.py: the official folder (bf16)

Shape legend used in every file of this project:
    B batch, T sequence length, P prompt length, C completion length, G group size,
    V vocabulary (embedding rows), D model width, H heads, Dh head width (D / H), F MLP width,
    S the positions a cached forward (KVCache) or a sampler step runs (S = T without a cache).

Module tree (= state_dict keys of the official checkpoint, no renaming):
    model.transformer.wte                      token embedding (V, D)
    model.transformer.blocks[i].attn_norm      RMSNorm before attention
    model.transformer.blocks[i].q_proj/k_proj/v_proj/attn_out
    model.transformer.blocks[i].ff_norm        RMSNorm before the MLP
    model.transformer.blocks[i].ff_proj        SwiGLU gate (goes through SiLU)
    model.transformer.blocks[i].up_proj        SwiGLU linear branch
    model.transformer.blocks[i].ff_out         MLP down projection
    model.transformer.ln_f                     final RMSNorm
    model.transformer.ff_out                   output head (V, D)
"""

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

ATTN_IMPLS = ("eager", "sdpa", "flex")


# -----------------------------------------------------------------------------
# Config


@dataclass
class Config:
    """LLaDA's config.json fields (official names). Defaults are the tiny classroom model."""

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4  # LLaDA-8B has no grouped-query attention: n_kv_heads == n_heads
    mlp_hidden_size: int = 704
    vocab_size: int = 448  # tiny tokenizer: 256 bytes + 6 special tokens + 175 BPE merges, padded
    embedding_size: int = 448  # rows of wte / ff_out (LLaDA pads 126,349 ids to 126,464 rows)
    max_sequence_length: int = 256  # LLaDA only sizes caches with it; we refuse longer inputs
    rope_theta: float = 10000.0  # LLaDA-8B: 500000 (it was trained at 4096 tokens)
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    mask_token_id: int = 258  # <|mdm_mask|>  (LLaDA-8B: 126336)
    eos_token_id: int = 257  # <|endoftext|> (LLaDA-8B: 126081), also the padding token
    pad_token_id: int = 257
    attn_impl: str = "sdpa"  # not a LLaDA field: which attention kernel runs ("eager", "sdpa", "flex")

    # LLaDA fields this implementation supports with one value only. from_pretrained() reads them
    # from config.json and refuses a checkpoint that needs anything else.
    FIXED = {
        "activation_type": "silu", "block_type": "llama", "layer_norm_type": "rms", "rope": True,
        "alibi": False, "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
        "scale_logits": False, "input_emb_norm": False, "attention_layer_norm": False,
        "multi_query_attention": None,
    }

    PRESETS = {
        # ~3.5M parameters: trains in minutes on a 2-core CPU (see README for numbers).
        "tiny": {},
        # LLaDA-8B-Instruct (its released config.json): 8,015,581,184 parameters.
        "llada-8b": dict(
            d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288,
            vocab_size=126464, embedding_size=126464, max_sequence_length=4096,
            rope_theta=500000.0, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
        ),
    }

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_kv_heads != self.n_heads:
            raise ValueError("grouped-query attention (n_kv_heads != n_heads) is not part of LLaDA-8B")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={self.attn_impl!r}; expected one of {ATTN_IMPLS}")

    @property
    def head_dim(self):
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name, **overrides):
        if name not in cls.PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d, source="config"):
        """Build from a dict with official field names; unknown LLaDA-only fields are checked."""
        for key, value in cls.FIXED.items():
            if key in d and d[key] != value:
                raise ValueError(f"{source}: {key}={d[key]!r} is not supported (this code implements {value!r})")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs.setdefault("n_kv_heads", d.get("n_kv_heads") or d.get("n_heads", cls.n_heads))
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path):
        """Read an official config.json (path: the file, or a directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self):
        """config.json contents: our fields plus the fixed LLaDA ones, so LLaDA tooling reads it."""
        d = {k: v for k, v in asdict(self).items() if k != "attn_impl"}
        return {**d, **self.FIXED, "model_type": "llada", "architectures": ["LLaDAModelLM"]}


# -----------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back before the weight (as LLaDA does)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rope_tables(T, head_dim, theta, device):
    """cos and sin tables (T, Dh) in fp32 for positions 0..T-1 (half-split layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)  # (T, Dh/2)
    emb = torch.cat([angles, angles], dim=-1)  # (T, Dh)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x_i, x_{i+Dh/2}) by position-dependent angles. x: (B, H, T, Dh)."""
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)  # (B, H, T, Dh/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # "rotate_half"
    return (x32 * cos + rotated * sin).to(x.dtype)


# -----------------------------------------------------------------------------
# Attention: three implementations of the same function.
#
# All three compute softmax(q k^T / sqrt(Dh)) v with NO causal mask. `key_mask` (B, T) marks real
# tokens with True; padded KEYS are ignored, while padded QUERY rows are still computed (they
# attend to the real keys and their outputs are simply never used). In a cached forward (KVCache)
# the queries are fewer than the keys: q (B, H, S, Dh) against k, v (B, H, T, Dh); all three work.


def eager_attention(q, k, v, key_mask):
    """The written-out softmax: the one to read. q, k, v: (B, H, T, Dh) -> (B, H, T, Dh)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) @ v


def sdpa_attention(q, k, v, key_mask):
    """PyTorch's fused scaled_dot_product_attention (flash / memory-efficient kernels)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T) broadcasts
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


_compiled_flex = None


def flex_attention(q, k, v, block_mask):
    """FlexAttention, compiled (uncompiled it materialises the full score matrix)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention as flex

        _compiled_flex = torch.compile(flex, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


def make_flex_block_mask(key_mask, n_heads, T, device, q_len=None):
    """Block mask for FlexAttention, built once per forward and shared by every layer. q_len: the
    number of queries when it is not T (a cached forward runs fewer positions than it attends to)."""
    from torch.nn.attention.flex_attention import create_block_mask

    if key_mask is None:
        return None

    def keep_real_keys(b, h, q_idx, kv_idx):
        return key_mask[b, kv_idx]

    return create_block_mask(keep_real_keys, B=key_mask.size(0), H=None, Q_LEN=q_len or T, KV_LEN=T, device=device)


# -----------------------------------------------------------------------------
# The transformer


class Block(nn.Module):
    """One LLaDA layer: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, cfg):
        super().__init__()
        D, F_ = cfg.d_model, cfg.mlp_hidden_size
        self.n_heads = cfg.n_heads
        self.attn_norm = RMSNorm(D, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.attn_out = nn.Linear(D, D, bias=False)
        self.ff_norm = RMSNorm(D, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(D, F_, bias=False)  # gate
        self.up_proj = nn.Linear(D, F_, bias=False)
        self.ff_out = nn.Linear(F_, D, bias=False)

    def forward(self, x, rope, attend, kv_cache=None, layer=0):
        B, S, D = x.shape  # S positions run: all T of them, except in a cached forward
        h = self.attn_norm(x)
        q, k, v = (proj(h).view(B, S, self.n_heads, -1).transpose(1, 2)  # (B, H, S, Dh)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # "fill": recorded; "use": (B, H, T, Dh), recorded + fresh
        y = attend(q, k, v)  # (B, H, S, Dh): one output per query
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, S, D))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class Model(nn.Module):
    """LLaDA's masked-diffusion transformer. forward(input_ids, attention_mask) -> logits (B, T, V)."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        cfg = config
        # Nested containers only to reproduce the official key names "model.transformer.*".
        self.model = nn.ModuleDict({"transformer": nn.ModuleDict({
            "wte": nn.Embedding(cfg.embedding_size, cfg.d_model),
            "blocks": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            "ln_f": RMSNorm(cfg.d_model, cfg.rms_norm_eps),
            "ff_out": nn.Linear(cfg.d_model, cfg.embedding_size, bias=False),
        })})
        # No initialisation here: under torch.device("meta") nothing is allocated, and a
        # checkpoint load overwrites every tensor anyway. Training from scratch calls init_weights().
        # Activation checkpointing (off by default): in training, keep only each block's input and
        # recompute the block's inside during the backward pass. Memory for activations falls from
        # ~all blocks' intermediates to one block's plus n_layers inputs, for ~1/3 more compute.
        # LLaDA-8B at d1's lengths needs it on one GPU (memory.py prints the plan).
        self.checkpointing = False

    @property
    def transformer(self):
        return self.model.transformer

    @torch.no_grad()
    def init_weights(self, seed=None):
        """Initialise for training from scratch: normal(0, init_std), norms to one.

        The residual-stream output projections (attn_out, ff_out) are scaled by 1/sqrt(2 n_layers)
        so the residual variance stays roughly constant with depth (the GPT-2 recipe)."""
        device = self.model.transformer.wte.weight.device  # draw on the weights' device (8B on GPU)
        gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
                continue
            residual_out = ".blocks." in name and name.endswith(("attn_out.weight", "ff_out.weight"))
            scale = 1 / math.sqrt(2 * self.config.n_layers) if residual_out else 1.0
            p.normal_(0.0, std * scale, generator=gen)
        return self

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        """input_ids (B, T) of token ids; attention_mask (B, T) with 1 = real token, 0 = padding.

        kv_cache: None (training, the reference sampler), or a KVCache for the fast samplers. In its
        "fill" mode nothing changes but every layer's keys and values are recorded; in its "use"
        mode input_ids holds only the positions lo..hi-1 of the sequence, (B, S), which attend to
        the recorded keys and values of every other position; attention_mask still covers all T
        positions, and the logits are (B, S, V). See KVCache."""
        cfg, tr = self.config, self.model.transformer
        B, S = input_ids.shape  # S = T, except in a cached forward
        lo, T = (0, S) if kv_cache is None else kv_cache.positions(S)  # run positions lo..lo+S-1 of T
        if T > cfg.max_sequence_length:
            raise ValueError(f"input of length {T} exceeds the model's context of {cfg.max_sequence_length} tokens")
        key_mask = None if attention_mask is None else attention_mask.bool()  # (B, T)
        if key_mask is not None and key_mask.all():
            key_mask = None  # nothing padded: take the unmasked (fastest) kernels
        attend = self._attention(key_mask, S, T, input_ids.device)
        cos, sin = rope_tables(T, cfg.head_dim, cfg.rope_theta, input_ids.device)  # 2 x (T, Dh)
        rope = cos[lo:lo + S], sin[lo:lo + S]  # 2 x (S, Dh): the positions that run, at their true places

        x = tr.wte(input_ids)  # (B, S, D); no scaling, no position embedding (RoPE does positions)
        recompute = self.checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for i, block in enumerate(tr.blocks):
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, rope, attend, use_reentrant=False)
            else:
                x = block(x, rope, attend, kv_cache, layer=i)
        return tr.ff_out(tr.ln_f(x))  # (B, S, V): logit i predicts the token AT position i

    def _attention(self, key_mask, S, T, device):
        """Pick the attention function once per forward (and, for flex, build its block mask once):
        S queries attend to T keys (S = T except in a cached forward)."""
        impl = self.config.attn_impl
        if impl == "eager":
            return lambda q, k, v: eager_attention(q, k, v, key_mask)
        if impl == "sdpa":
            return lambda q, k, v: sdpa_attention(q, k, v, key_mask)
        if device.type == "cpu" and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            raise RuntimeError("attn_impl='flex' has no backward pass on CPU (torch 2.13); "
                               "train with attn_impl='sdpa', or run flex under torch.no_grad()")
        if device.type == "cpu" and self.config.head_dim < 32:
            # Measured: compiled flex on a CPU with AVX2 only (torch 2.13) returns wrong numbers or NaN
            # for head_dim 16 at some lengths (8, 24), and right ones at head_dim 32 and 64.
            raise RuntimeError(f"attn_impl='flex' on CPU needs head_dim >= 32 (d_model / n_heads), got "
                               f"{self.config.head_dim}: smaller heads can compute wrong numbers there; use 'sdpa'")
        block_mask = make_flex_block_mask(key_mask, self.config.n_heads, T, device, q_len=S)
        return lambda q, k, v: flex_attention(q, k, v, block_mask)


# -----------------------------------------------------------------------------
# The key-value cache of the fast samplers


class KVCache:
    """Every layer's keys and values, kept between sampler steps: Fast-dLLM's block-level
    approximate KV cache (Wu et al. 2025, arXiv 2505.22618). Model.forward reads it.

    A diffusion LM attends both ways, so a token's keys and values change whenever any token
    changes, and no cache is exact. But while the sampler fills one block, the keys and values of
    the other positions barely move: Fast-dLLM records them once per block and recomputes only
    the block (its positions are the ones that change).

        cache = KVCache()
        logits = model(x, mask, kv_cache=cache.fill())               # (B, T, V), as without a cache;
                                                                     # keys[i], values[i]: (B, H, T, Dh)
        logits = model(x[:, lo:hi], mask, kv_cache=cache.use(lo, hi))    # (B, hi - lo, V)

    In "use" mode only positions lo..hi-1 run (RoPE at their true positions); in every layer their
    queries attend to their own fresh keys and values and to the recorded ones of the rest:

        P P P P P P | b b b b | M M M M M M M M      use(lo, hi) over the block b (Fast-dLLM's dual cache)
        recorded    |  fresh  | recorded
        P P P P P P | b b b b   M M M M M M M M      use(lo, T): the block and all right of it (prefix cache)
        recorded    |  fresh                  |

    Keys are recorded after RoPE, so a cached key needs no position of its own."""

    def __init__(self):
        self.mode, self.lo, self.hi = "fill", 0, 0
        self.keys, self.values = [], []  # per layer (B, H, T, Dh)

    def fill(self):
        """The next forward runs every position and records its keys and values (dropping the old)."""
        self.mode, self.keys, self.values = "fill", [], []
        return self

    def use(self, lo, hi):
        """The next forward runs positions lo..hi-1 only, against the recorded keys and values."""
        if not self.keys:
            raise RuntimeError("KVCache.use() before any fill(): nothing is recorded yet")
        self.mode, self.lo, self.hi = "use", lo, hi
        return self

    def positions(self, S):
        """(lo, T) for a forward of S input positions: the first one's position, the sequence length."""
        if self.mode == "fill":
            return 0, S
        if S != self.hi - self.lo:
            raise ValueError(f"KVCache.use({self.lo}, {self.hi}) runs {self.hi - self.lo} positions; got {S}")
        return self.lo, self.keys[0].size(2)

    def update(self, layer, k, v):
        """Layer `layer`'s fresh k, v (B, H, S, Dh) -> the k, v its queries attend to."""
        if self.mode == "fill":
            self.keys.append(k)  # layers run in order: keys[layer] is this layer's
            self.values.append(v)
            return k, v
        return self._splice(self.keys[layer], k), self._splice(self.values[layer], v)  # (B, H, T, Dh)

    def _splice(self, recorded, fresh):
        """recorded (B, H, T, Dh) with positions lo..hi-1 replaced by fresh (B, H, hi - lo, Dh)."""
        return torch.cat([recorded[:, :, :self.lo], fresh, recorded[:, :, self.hi:]], dim=2)
