"""
The memory plan of a full-scale run: the bytes each part of an SFT or diffu-GRPO step needs on the
device, printed at the start of training, and a refusal BEFORE the weights are loaded when the run
cannot fit (a clear message instead of an out-of-memory error an hour in). From the command line:

    python train.py --stage grpo --preset=d1 --task=gsm8k --plan=llada-8b   # d1's RL run on LLaDA-8B
    python train.py --stage sft --preset=d1 --plan=llada-8b                 # d1's SFT run
    python train.py --stage grpo --logp_chunk=2 --plan=tiny                 # any stage key, any preset
    python train.py --stage sft --plan=path/to/LLaDA-8B-Instruct            # a config.json folder, or a .pt

--plan=MODEL parses the stage's keys as a run would, prints the plan (one line per part) and a table
"fits on a 24 / 40 / 80 GB card?" with, for each size that does not fit, what would (the largest
--micro_batch, --logp_chunk or --rollout_batch, or why nothing does), and exits without loading or
writing anything (parameters are counted on the meta device). Training calls plan_run().

The formula (bytes; GB = 10^9 bytes). Notation of model.py: L layers, D width, F MLP width, V vocab,
H heads; w = bytes of a weight (2 for LLaDA-8B's bf16, 4 for the tiny fp32 checkpoints), c = bytes of
the compute dtype (2 with --dtype=bfloat16 or bf16 weights, else 4), s = bytes of the residual stream
(= w: embeddings and residual adds stay in the weights' dtype under autocast). A micro-step runs n
rows of T tokens (SFT: micro_batch x seq_len; GRPO: logp_chunk x S of P + C, P the prompt, C gen_length,
S = 1, 2 or K passes of --estimator); E = n T D, E_F = n T F. A "24 GB" card holds 24 GiB = 25.8 GB.

    weights      n_params w                               counted on the meta device (Model + add_lora)
    reference    n_params w     GRPO with full fine-tuning only (a frozen deepcopy); LoRA turns its
                                adapters off instead (lora.adapters_off), which costs nothing
    optimizer    LoRA: n_lora (4 + 4 + 8)                  fp32 adapters, fp32 grads, 2 fp32 AdamW states
                 full: n_params (w + 2 w)                  grads and AdamW's 2 states, in the weights' dtype
    FSDP         --fsdp, N processes: weights, reference, optimizer / N, each + (root + 2 blocks) w gathered
    kept log-probs  GRPO: 2 mu N C 4                      old and reference log-probs of every prompt mask
    activations  what autograd saves for backward (from model.Block.forward; tests/test_memory.py checks
                 it against torch.autograd.graph.saved_tensors_hooks), per block:
                   RMSNorm x2: its fp32 input (4 E) + the normed tensor (s E, full fine-tuning only:
                   LoRA leaves the norm weights frozen, so their multiply saves nothing)
                   q/k/v input and MLP input: c E each (saved when their linear trains)
                   attention: q, k (after RoPE), v and the output: 4 c E (SDPA and flex save these four;
                   attn_impl="eager" also keeps the (n, H, T, T) softmax: n H T^2 c)
                   SwiGLU: gate, silu(gate), up: 3 c E_F; the product: c E_F (when ff_out trains)
                   LoRA: per adapted layer n T r c (the rank-r middle) + r (in + out) c (the adapters' cast);
                   with LoRA dropout each adapter saves its dropped input and mask (2 c per input element)
                 + ln_f's fp32 input 4 E (+ s E + c E, full fine-tuning). L blocks; with checkpointing L
                 block inputs (s E each) + one block (recomputed in backward). + 3 c E_F of backward
                 temporaries (the gradients alive inside one MLP's backward).
    logits       n V max(c T + (c + 8) T', 12 T')         forward: the logits, the scored positions' copy,
                                                           its fp32 cast and log-softmax; backward: the
                                                           saved log-softmax, its gradient in and out (fp32).
                                                           T' = scored positions: SFT T, GRPO C
    rollout      GRPO, no grad: a sampler call of R rows of T = P + C:
                   R T V (c + 16)                          the logits + add_gumbel_noise's 2 float64 arrays (a
                                                           copy of the logits and u; the rest is in place); the
                                                           confidence's fp32 softmax (8) comes after argmax frees
                                                           them; greedy low-confidence sampling: c + 8
                   + R T (4 D + 3 F) c                     one block's forward working set
                   + 2 L R T D c                           the KV cache (--cache only)
    log-prob forward   GRPO, no grad: n T V c + 2 x 4 n C V + n T (4 D + 3 F) c   (old and ref log-probs)

    peak  = weights + reference + optimizer + kept log-probs + max(activations + logits, rollout, log-prob forward)
    total = peak + 10% of it + 1 GB: CUDA context, cuBLAS workspace, fragmentation (unseen by max_memory_allocated)

Worked example, by hand: d1's RL run on LLaDA-8B (train.py --stage grpo --preset=d1 --task=gsm8k
--plan=llada-8b). Weights 8,015,581,184 x 2 = 16.031 GB; LoRA r=128 on q, k, v, up: (3 x 128 x 8,192
+ 128 x 16,384) x 32 = 167,772,160 x 16 = 2.684 GB; kept log-probs 2 x 12 x 96 x 256 x 4 = 0.002 GB;
the rollout of 6 rows x (200 + 256) tokens: 6 x 456 x 126,464 x (2 + 16) = 6.228 GB + its forward
working set 6 x 456 x (4 x 4,096 + 3 x 12,288) x 2 = 0.291 GB, 6.519 GB: the peak phase (the training
micro-step needs 4.17, the log-prob forward 2.54); peak 16.031 + 2.684 + 0.002 + 6.519 = 25.24 GB;
total 25.24 x 1.1 + 1 = 28.76 GB: fits 40 and 80 GB cards; on a 24 GB card (25.8 GB),
--rollout_batch=3 --logp_chunk=5 would (25.4 GB).

Left out, so the plan is a slight over-estimate on purpose: small terms (RoPE tables, log-sum-exps, token ids,
clip_grad_norm_'s norms), and that the first block of a LoRA run saves less than the others. With fp32 weights
under bf16 autocast (the tiny model) autocast's bf16 weight copies (c bytes per linear weight) join the activations.
"""

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from checkpoint import model_config
from distributed import launched_world
from lora import LLADA_LINEARS, add_lora
from model import Config, Model

GB, GIB = 1e9, 2**30  # memory.py counts in GB = 10^9 bytes; a card sold as "80 GB" holds 80 GiB = 85.9 GB
ALLOWANCE_SHARE = 0.10  # of the peak: allocator fragmentation (block rounding, caching)
ALLOWANCE_FIXED = 1 * GB  # the CUDA context and cuBLAS workspace (~0.5-1 GB on an H100)
STAGES = ("sft", "grpo")
DEFAULT_PROMPT_LENGTH = 200  # GRPO without --max_prompt_length: d1's prompt cut (grpo.d1_grpo_preset)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class MemoryPlanError(ValueError):
    """A run that does not fit the device: the message gives the plan, the limit and what to change."""


# -----------------------------------------------------------------------------
# The plan: named byte counts


PARTS = (  # (field, label): the order of the printed table
    ("weights", "weights"), ("reference", "reference copy"), ("optimizer", "optimizer"),
    ("kept_logps", "kept log-probs"), ("activations", "activations"), ("logits", "logits"),
    ("logp_forward", "log-prob forward"), ("rollout", "rollout"))


@dataclass
class MemoryPlan:
    """Bytes per part of one run. `total` = what it needs on the device, allowance included."""

    title: str  # one line: the stage, the model, LoRA, checkpointing, the shapes
    weights: int = 0
    reference: int = 0
    optimizer: int = 0
    kept_logps: int = 0
    activations: int = 0
    logits: int = 0
    logp_forward: int = 0
    rollout: int = 0
    notes: dict = field(default_factory=dict)  # part -> a one-line explanation
    # What the plan was computed from, so what_fits() can recompute it with other settings.
    config: Config | None = field(default=None, repr=False)
    weights_dtype: torch.dtype = field(default=torch.bfloat16, repr=False)
    knobs: dict = field(default_factory=dict, repr=False)

    @property
    def phases(self):
        """The parts of a step that are never alive at the same time: the peak takes the largest."""
        phases = {"training micro-step": self.activations + self.logits}
        if self.knobs.get("stage") == "grpo":
            phases.update({"rollout": self.rollout, "log-prob forward": self.logp_forward})
        return phases

    # fixed: alive all run long; the peak adds the largest phase, the total the allowance
    fixed = property(lambda self: self.weights + self.reference + self.optimizer + self.kept_logps)
    peak = property(lambda self: self.fixed + max(self.phases.values()))
    allowance = property(lambda self: int(ALLOWANCE_SHARE * self.peak + ALLOWANCE_FIXED))
    total = property(lambda self: self.peak + self.allowance)

    def __str__(self):
        out = [f"memory plan: {self.title}"]
        for name, label in PARTS:
            if getattr(self, name) or name in self.notes:
                out.append(f"  {label:<17}{getattr(self, name) / GB:8.2f} GB  {self.notes.get(name, '')}")
        fixed = " + ".join(label for name, label in PARTS[:4] if getattr(self, name))
        phases = ", ".join(f"{k} {v / GB:.2f}" for k, v in self.phases.items())
        out.append(f"  {'allowance':<17}{self.allowance / GB:8.2f} GB  {ALLOWANCE_SHARE:.0%} + "
                   f"{ALLOWANCE_FIXED / GB:.0f} GB: CUDA context, cuBLAS workspace, allocator fragmentation")
        out.append(f"  {'total':<17}{self.total / GB:8.2f} GB  {fixed} + max({phases}) + allowance; "
                   f"the peak is the {max(self.phases, key=self.phases.get)}")
        return "\n".join(out)


# -----------------------------------------------------------------------------
# Parameter counts, on the meta device (nothing is allocated)


@functools.lru_cache(maxsize=16)
def _param_counts(config_items, lora_r, targets):
    config = Config(**dict(config_items))
    with torch.device("meta"):
        model = Model(config)
        n_params = model.num_params()
        if lora_r > 0:
            add_lora(model, targets=targets, r=lora_r)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return n_params, trainable


def param_counts(config, lora_r=0, targets=()):
    """(parameters of the model, trainable parameters): all of them, or the LoRA adapters' (lora_r > 0)."""
    return _param_counts(tuple(asdict(config).items()), lora_r, tuple(targets) if lora_r > 0 else ())


# -----------------------------------------------------------------------------
# The parts, one function each (bytes)


def block_saved_bytes(config, rows, T, c, s, w, lora_r=0, targets=(), dropout=0.0):
    """What autograd saves inside one model.Block for its backward: (rows, T) tokens, c bytes of
    compute, s of the residual stream, w of a weight; full fine-tuning (lora_r = 0) or LoRA on
    `targets` (with dropout on the adapters' input when dropout > 0)."""
    E, EF, full = rows * T * config.d_model, rows * T * config.mlp_hidden_size, lora_r == 0
    trains = set(LLADA_LINEARS) if full else set(targets)
    D, F_ = config.d_model, config.mlp_hidden_size
    shapes = {"q_proj": (D, D), "k_proj": (D, D), "v_proj": (D, D), "attn_out": (D, D),  # (in, out) of each linear
              "ff_proj": (D, F_), "up_proj": (D, F_), "ff_out": (F_, D)}
    # RMSNorm (x2): pow and the rsqrt multiply save the fp32 input; "normed * weight" saves normed if it trains
    saved = 2 * (4 * E + (s * E if full else 0))
    saved += 4 * c * E  # attention: q, k (after RoPE), v and the output (also attn_out's input, a view)
    if config.attn_impl == "eager":  # the written-out softmax also keeps its (rows, H, T, T) probabilities
        saved += rows * config.n_heads * T * T * c
    saved += 3 * c * EF  # SwiGLU: the gate (SiLU's input), silu(gate) and up (the product's inputs)
    if full or not dropout:
        # The inputs of the linears that train: h for q/k/v, h2 for the MLP, the product for ff_out. When
        # the stream is wider than the compute (fp32 weights, bf16 autocast) each saves a cast copy of its own.
        for names in (("q_proj", "k_proj", "v_proj"), ("ff_proj", "up_proj")):
            n_training = len(trains & set(names))
            saved += (c * E if s == c else n_training * c * E) if n_training else 0
        saved += c * EF if "ff_out" in trains else 0
    else:  # LoRA dropout: each adapter saves its own dropped input and the dropout mask, c bytes each
        # (the mask is in the input's dtype, except in CUDA's fused dropout kernel: 1 byte)
        saved += sum(2 * c * rows * T * shapes[name][0] for name in targets)
    if not full:  # LoRA: the rank-r middle (rows, T, r), and the adapters cast to the compute dtype
        for name in targets:
            fan_in, fan_out = shapes[name]
            saved += rows * T * lora_r * c + (lora_r * (fan_in + fan_out) * c if c != 4 else 0)
    if w != c:  # fp32 weights under bf16 autocast: autocast's bf16 copy of every linear weight
        saved += sum(i * o for i, o in shapes.values()) * c
    return saved


def activation_bytes(config, rows, T, c, s, w, lora_r=0, targets=(), checkpointing=False, dropout=0.0):
    """{"saved": what autograd keeps between forward and backward, "backward": the temporaries of one
    MLP's backward} for a micro-step of (rows, T) tokens. With checkpointing, only the L block inputs
    are kept and one block is recomputed (and saved) at a time in backward."""
    E, EF = rows * T * config.d_model, rows * T * config.mlp_hidden_size
    block = block_saved_bytes(config, rows, T, c, s, w, lora_r, targets, dropout)
    final = 4 * E + ((s + c) * E if lora_r == 0 else 0)  # ln_f's fp32 input (+ normed and the head's input)
    if w != c:
        final += config.d_model * config.embedding_size * c  # autocast's copy of the head
    blocks = config.n_layers * s * E + block if checkpointing else config.n_layers * block
    return {"saved": blocks + final, "backward": 3 * c * EF}


def logits_bytes(config, rows, T, scored, c):
    """The logits of a training micro-step and the fp32 loss tensors around them, at their peak.

    Forward: the (rows, T, V) logits (c bytes), the scored positions' copy (c; SFT's masked_token_ce
    indexes them, GRPO's slice is a view), their fp32 cast and the log-softmax (4 + 4).
    Backward: the saved log-softmax, its incoming gradient and the gradient it returns (3 x 4).
    The logits themselves are freed before backward, so the peak is the larger of the two."""
    return rows * config.embedding_size * max(c * T + (c + 8) * scored, 12 * scored)


def forward_working_bytes(config, rows, T, c):
    """A forward pass without gradients keeps only the current block's tensors: roughly x, h, q, k, v,
    the attention output (4 D) and gate, up, product (3 F); the eager attention its scores and softmax."""
    scores = 2 * rows * config.n_heads * T * T * c if config.attn_impl == "eager" else 0
    return rows * T * (4 * config.d_model + 3 * config.mlp_hidden_size) * c + scores


def rollout_bytes(config, rows, T, c, temperature, remasking="low_confidence", cache=None, threshold=None):
    """One sampler call (diffusion.generate) of (rows, T = P + C): the logits of a step, then _commit:
    with temperature, add_gumbel_noise's 2 float64 arrays (the logits' copy and u: 16 bytes per logit);
    after argmax has freed them, the noise-free softmax of low-confidence remasking (in any row: also
    GRPO's mixed) or the threshold (fp32 cast + softmax: 8 bytes). The peak is the larger of the two."""
    per_logit = c + max(16 if temperature > 0 else 0,
                        8 if remasking != "random" or threshold is not None else 0)
    kv_cache = 2 * config.n_layers * rows * T * config.d_model * c if cache else 0
    return rows * T * config.embedding_size * per_logit + forward_working_bytes(config, rows, T, c) + kv_cache


def logp_forward_bytes(config, rows, T, C, c):
    """estimators.chunked_logps, no grad, one pass at a time (any --estimator): the (rows, T, V) logits,
    the fp32 cast of the completion's and its log-softmax (rows, C, V), and the forward's working set."""
    return rows * config.embedding_size * (c * T + 2 * 4 * C) + forward_working_bytes(config, rows, T, c)


# -----------------------------------------------------------------------------
# A stage config -> the plan


def _knobs(stage, cfg, config, prompt_length):
    """The sizes that matter, read from a stage config (keys the config lacks take their default)."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {', '.join(STAGES)}")
    get = functools.partial(getattr, cfg)
    lora_r = get("lora_r", 0)
    k = dict(stage=stage, lora_r=lora_r, checkpointing=bool(get("checkpointing", False)),
             targets=tuple(get("lora_targets", "q_proj,k_proj,v_proj,up_proj").split(",")) if lora_r else (),
             dropout=get("lora_dropout", 0.0) if lora_r else 0.0, dtype=get("dtype", "bfloat16"))
    processes = launched_world()  # under torchrun each process plans its share
    k["shards"] = processes if get("fsdp", False) else 1  # FSDP: 1/N of the model's state on each process
    if stage == "sft":
        batch = max(1, get("batch_size", 1) // processes)
        k.update(batch_size=batch, micro_batch=min(get("micro_batch", 0) or batch, batch), seq_len=get("seq_len", 4096))
    else:
        C = get("gen_length", 256)
        P = prompt_length or get("max_prompt_length", 0) or min(DEFAULT_PROMPT_LENGTH, config.max_sequence_length - C)
        N = max(1, get("questions_per_step", 1) // processes) * get("group_size", 6)
        k.update(N=N, P=P, C=C, mu=get("mu", 1), rollout_batch=min(get("rollout_batch", 0) or N, N),
                 logp_chunk=min(get("logp_chunk", N), N), temperature=get("temperature", 0.9),
                 remasking=get("remasking", "low_confidence"), cache=get("cache", None),
                 threshold=get("threshold", None),  # and forward passes per log-prob (estimators.py):
                 passes={"coupled": 2, "elbo": get("elbo_samples", 2)}.get(get("estimator", "d1"), 1))
    return k


def memory_plan(config, stage, cfg, prompt_length=None, weights_dtype=None):
    """The plan of a `stage` ("sft" or "grpo") run of the model `config` with the stage config `cfg`
    (an SFTConfig / GRPOConfig, or anything with their attributes; missing ones take defaults).
    prompt_length: GRPO's P (default: cfg.max_prompt_length, else 200, d1's cut); weights_dtype: the
    weights' dtype (None: that of cfg.init, read without loading the weights)."""
    if weights_dtype is None:
        weights_dtype = checkpoint_dtype(getattr(cfg, "init", None))
    return _plan(config, weights_dtype, _knobs(stage, cfg, config, prompt_length))


def checkpoint_dtype(path):
    """The weights' dtype of a model path, read without loading the weights: a Hugging Face folder's
    config.json "torch_dtype", a project .pt file's first tensor (memory-mapped: nothing is read);
    bf16 (LLaDA-8B's) when there is no path or it cannot be read (fp32 for an unreadable .pt)."""
    path = Path(path) if path else None
    try:
        if path is not None and path.is_dir():
            return DTYPES.get(json.loads((path / "config.json").read_text()).get("torch_dtype"), torch.bfloat16)
        if path is not None and path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("model") or {}
            return next(iter(state.values())).dtype
    except Exception:  # no config.json, not a zip checkpoint, no weights ...: the plan is an estimate, not a loader
        return torch.float32 if path.is_file() else torch.bfloat16
    return torch.bfloat16


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float32", "fp32")


def _plan(config, weights_dtype, k):
    s = w = torch.finfo(weights_dtype).bits // 8  # s: the residual stream stays in the weights' dtype
    c = 2 if k["dtype"] == "bfloat16" or w == 2 else 4
    n_params, trainable = param_counts(config, k["lora_r"], k["targets"])
    wname, cname = _dtype_name(weights_dtype), "bf16" if c == 2 else "fp32"
    lora = f"LoRA r={k['lora_r']} on {','.join(k['targets'])}" if k["lora_r"] else "full fine-tuning"
    plan = MemoryPlan(title="", config=config, weights_dtype=weights_dtype, knobs=dict(k))
    N, root = k["shards"], 2 * config.embedding_size * config.d_model + config.d_model  # FSDP; wte, ff_out, ln_f
    gathered = (root + 2 * (n_params - root) // config.n_layers) * w if N > 1 else 0  # the root and 2 blocks, whole
    fsdp = f" / {N} processes (FSDP) + the root group and 2 blocks held whole" if N > 1 else ""
    plan.weights = n_params * w // N + gathered
    plan.notes["weights"] = f"{n_params:,} parameters x {w} bytes ({wname})" + fsdp
    plan.optimizer = trainable * (16 if k["lora_r"] else 3 * w) // N + gathered
    plan.notes["optimizer"] = (f"{trainable:,} LoRA parameters x 16 bytes: fp32 adapters, grads, 2 AdamW states"
                               if k["lora_r"] else f"{trainable:,} parameters x {3 * w} bytes: {wname} grads and "
                               "2 AdamW states") + fsdp

    if k["stage"] == "sft":
        rows, T, scored = k["micro_batch"], k["seq_len"], k["seq_len"]
        shape = f"micro-batch {rows} x {T} tokens"
    else:
        rows, T, scored = k["logp_chunk"] * k["passes"], k["P"] + k["C"], k["C"]  # passes kept until backward
        passes = f", {k['passes']} passes each (--estimator)" if k["passes"] > 1 else ""
        shape = f"log-prob chunk {k['logp_chunk']} x ({k['P']} + {k['C']}) tokens{passes}"
    act = activation_bytes(config, rows, T, c, s, w, k["lora_r"], k["targets"], k["checkpointing"], k["dropout"])
    plan.activations = act["saved"] + act["backward"]
    how = (f"{config.n_layers} block inputs + 1 block's saved tensors (checkpointing)" if k["checkpointing"]
           else f"{config.n_layers} blocks' saved tensors (no checkpointing)")
    plan.notes["activations"] = f"{shape}: {how} + backward temporaries"
    plan.logits = logits_bytes(config, rows, T, scored, c)
    plan.notes["logits"] = (f"({rows}, {T}, {config.embedding_size}) {cname} logits, fp32 log-softmax of "
                            f"({rows}, {scored}, V) and its gradients")

    if k["stage"] == "grpo":
        _grpo_parts(plan, config, k, c, k["logp_chunk"])  # the no-grad log-probs run one pass at a time
        shape = (f"{k['N']} rows of {k['P']} + {k['C']} tokens, rollout_batch {k['rollout_batch']}, "
                 f"logp_chunk {k['logp_chunk']}, mu {k['mu']}")
    else:
        shape = f"batch {k['batch_size']}, micro_batch {rows}, seq_len {T}"
    size = f"{n_params / 1e9:.2f}B" if n_params >= 1e9 else f"{n_params / 1e6:.1f}M"
    plan.title = (f"{k['stage']}, {size} params ({wname}, L {config.n_layers} D {config.d_model} "
                  f"V {config.embedding_size}), {lora}, checkpointing {'on' if k['checkpointing'] else 'off'}, "
                  f"{cname} compute; {shape}")
    return plan


def _grpo_parts(plan, config, k, c, rows):
    """GRPO's own parts: the reference copy, the kept log-probs, the rollout, the log-prob forward."""
    N, P, C, R = k["N"], k["P"], k["C"], k["rollout_batch"]
    if not k["lora_r"]:
        plan.reference = plan.weights
        plan.notes["reference"] = "a frozen copy of the weights: pi_ref (full fine-tuning)"
    plan.kept_logps = 2 * k["mu"] * N * C * 4
    plan.notes["kept_logps"] = f"old + ref: 2 x mu {k['mu']} x {N} rows x {C} tokens, fp32"
    plan.rollout = rollout_bytes(config, R, P + C, c, k["temperature"], k["remasking"], k["cache"], k["threshold"])
    noise = "float64 Gumbel noise (2 arrays)" if k["temperature"] > 0 else "fp32 softmax"
    plan.notes["rollout"] = (f"sampler call of {R} rows x ({P} + {C}): {'bf16' if c == 2 else 'fp32'} logits + "
                             f"{noise} + forward" + (" + KV cache" if k["cache"] else ""))
    plan.logp_forward = logp_forward_bytes(config, rows, P + C, C, c)
    plan.notes["logp_forward"] = f"no grad, {rows} rows: logits + fp32 log-softmax of the completion"


def replan(plan, **changes):
    """The same plan with some settings changed (checkpointing, micro_batch, logp_chunk, lora_r, ...)."""
    return _plan(plan.config, plan.weights_dtype, {**plan.knobs, **changes})


# -----------------------------------------------------------------------------
# The device's memory; fits or not, and what would


def device_memory_bytes(device):
    """The memory a run on `device` may use: a CUDA device's total memory; on CPU the host's physical
    memory; None (no check) for anything else (mps shares the host's memory in ways we do not plan)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    if device.type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def what_fits(plan, limit):
    """(fits, advice): "" when the plan fits in `limit` bytes, else the settings that would, or why none do."""
    if plan.total <= limit:
        return True, ""
    k = plan.knobs
    base = int(plan.fixed * (1 + ALLOWANCE_SHARE) + ALLOWANCE_FIXED)  # what the run needs without a step
    if base > limit:
        what = (" and LoRA state" if k["lora_r"] else
                ", their gradients, AdamW state and the reference copy" if plan.reference else
                ", their gradients and AdamW state")
        advice = f"no: the {_dtype_name(plan.weights_dtype)} weights{what} alone need {base / GB:.1f} GB"
        if not k["lora_r"]:
            lora = replan(plan, lora_r=128, targets=("q_proj", "k_proj", "v_proj", "up_proj"), shards=1)  # DDP
            advice += f"; with LoRA (--lora_r=128) this run needs {lora.total / GB:.1f} GB"
        return False, advice
    changes = {} if k["checkpointing"] else {"checkpointing": True}
    fits = lambda **more: replan(plan, **changes, **more).total <= limit  # noqa: E731
    if k["stage"] == "sft":
        m = next((m for m in range(k["micro_batch"], 0, -1) if fits(micro_batch=m)), 0)
        if not m:
            L = next((L for L in range(k["seq_len"] // 128 * 128, 0, -128) if fits(micro_batch=1, seq_len=L)), 0)
            one = replan(plan, **changes, micro_batch=1).total / GB
            ckpt = " with --checkpointing" if changes else ""
            return False, (f"no: one row of {k['seq_len']} tokens needs {one:.1f} GB{ckpt}"
                           + (f"; rows of --seq_len={L} would fit" if L else ""))
        if m != k["micro_batch"]:
            changes["micro_batch"] = m
    else:
        R = next((R for R in range(k["rollout_batch"], 0, -1) if fits(rollout_batch=R, logp_chunk=1)), 0)
        n = next((n for n in range(k["logp_chunk"], 0, -1) if fits(logp_chunk=n, rollout_batch=1)), 0)
        if not (R and n):
            part = "one sampler row" if not R else "one log-prob row"
            need = replan(plan, **changes, rollout_batch=1, logp_chunk=1).total / GB
            return False, f"no: even {part} per call needs {need:.1f} GB (try a shorter --gen_length)"
        changes.update({key: v for key, v in (("rollout_batch", R), ("logp_chunk", n)) if v != k[key]})
    need = replan(plan, **changes).total / GB
    flags = " ".join(f"--{key}" if v is True else f"--{key}={v}" for key, v in changes.items())
    return False, f"{flags} ({need:.1f} GB)"


def check_fits(plan, limit_bytes, what="the device"):
    """Raise MemoryPlanError unless plan.total <= limit_bytes (None: no check) of `what`, the device: the
    total, the biggest parts, the limit, the settings to lower and an example that fits (or why none does)."""
    if limit_bytes is None or plan.total <= limit_bytes:
        return plan
    parts = sorted(((label, getattr(plan, name)) for name, label in PARTS if getattr(plan, name)), key=lambda p: -p[1])
    listed = ", ".join(f"{label} {b / GB:.1f}" for label, b in parts[:6])
    limit = f"{limit_bytes / GB:.{1 if limit_bytes >= 0.1 * GB else 3}f}"
    needs = (f"this run needs ~{plan.total / GB:.1f} GB ({listed}, allowance {plan.allowance / GB:.1f}) "
             f"but {what} has {limit} GB; ")
    _, advice = what_fits(plan, limit_bytes)
    if advice.startswith("no: "):  # no setting of this run makes it fit: say why
        raise MemoryPlanError(needs + advice.removeprefix("no: "))
    k = plan.knobs
    todo = [text for wanted, text in (
        (not k["checkpointing"], "turn on --checkpointing"),
        (k["stage"] == "sft" and k.get("micro_batch", 1) > 1, f"lower --micro_batch (now {k.get('micro_batch')})"),
        (k["stage"] == "grpo" and k.get("logp_chunk", 1) > 1, f"lower --logp_chunk (now {k.get('logp_chunk')})"),
        (k["stage"] == "grpo" and k.get("rollout_batch", 1) > 1,
         f"lower --rollout_batch (now {k.get('rollout_batch')})"),
        (not k["lora_r"], "train LoRA adapters (--lora_r=128)")) if wanted]
    raise MemoryPlanError(needs + ", ".join(todo) + f"; e.g. {advice}")


def plan_run(config, stage, cfg, device, weights_dtype=torch.bfloat16, prompt_length=None):
    """For training code, before the weights are loaded: print the plan, then refuse (MemoryPlanError)
    a run that does not fit cfg.memory_limit_gb, or the device's memory when that is None."""
    plan = memory_plan(config, stage, cfg, prompt_length, weights_dtype)
    print(plan)
    limit_gb = getattr(cfg, "memory_limit_gb", None)
    limit = limit_gb * GB if limit_gb is not None else device_memory_bytes(device)
    what = f"--memory_limit_gb={limit_gb}" if limit_gb is not None else str(device)
    return check_fits(plan, limit, what)


# -----------------------------------------------------------------------------
# train.py --plan=MODEL: the plan of a run, and "fits on 24 / 40 / 80 GB?"


def plan_for(model, stage, cfg):
    """The plan of a `stage` run (cfg: its config) of `model`: a preset (llada-8b in bf16 as released,
    tiny in fp32), a Hugging Face-format folder (its config.json and torch_dtype) or a project .pt."""
    if model in Config.PRESETS:
        config, dtype = Config.preset(model), torch.bfloat16 if model == "llada-8b" else torch.float32
    elif Path(model).exists():
        config, dtype = model_config(model), checkpoint_dtype(model)
    else:
        raise ValueError(f"--plan={model}: not a preset ({', '.join(Config.PRESETS)}), a LLaDA folder or a .pt file")
    return memory_plan(config, stage, cfg, weights_dtype=dtype)


def fit_table(plan, gib=(24, 40, 80)):
    """A markdown table: does the plan fit a card sold as "24 GB" (24 GiB), ..., and if not, what would."""
    rows = ["| card | memory | fits? | what would fit |", "|---|---|---|---|"]
    for size in gib:
        fits, advice = what_fits(plan, size * GIB)
        answer = "yes" if fits else f"no ({plan.total / GB:.1f} GB)"
        rows.append(f"| {size:g} GB | {size * GIB / GB:.1f} GB | {answer} | {advice} |")
    return "\n".join(rows)
