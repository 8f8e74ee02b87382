"""
Train the tiny LLaDA-style model, one stage at a time: pretrain -> sft -> grpo.

    python train.py --stage pretrain                     # ~5 min on a 2-core CPU
    python train.py --stage pretrain --steps=2000 --out_dir=out/big
    python train.py --stage pretrain --resume            # continue out_dir/ckpt.pt exactly
    python train.py --stage pretrain --help              # every key, its type and default

Every key of the stage's config dataclass (below) can be set with --key=value (or --key value;
a bare --flag sets a bool). Values are type-checked and an unknown key is an error listing the
valid ones. The resolved config is printed at start and saved in every checkpoint.

Each stage has ONE visible training loop in this file; the maths lives in diffusion.py (losses),
sft.py (batches) and grpo.py (the RL objective). Outputs, in out_dir:
    ckpt.pt          model (official LLaDA key names), config, optimizer, step, RNG states
    metrics.jsonl    one JSON object per logged step (stage, step, loss, lr, seconds, ...)
"""

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from diffusion import generate, pretrain_loss
from model import Config, Model
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
# Configs: one dataclass per stage, defaults that run on a laptop CPU


@dataclass
class TrainConfig:
    """Keys every stage has."""

    steps: int = 1000  # optimizer steps
    out_dir: str = "out/pretrain"
    seed: int = 1337
    device: str = "auto"  # auto -> cuda, then mps, then cpu
    batch_size: int = 32
    lr: float = 1e-3  # peak learning rate
    resume: bool = False  # continue from out_dir/ckpt.pt
    dtype: str = "bfloat16"  # autocast dtype: "bfloat16" or "float32" (see bench.py: bf16 is faster here)
    log_every: int = 25
    sample_every: int = 250  # decode a sample every N steps (0 = never)
    ckpt_every: int = 250


@dataclass
class PretrainConfig(TrainConfig):
    """Pretraining from scratch on the tiny tasks' text corpus (tasks.pretrain_corpus)."""

    model: str = "tiny"  # a Config preset name (model.py)
    seq_len: int = 128  # tokens per row (the tiny tokenizer is byte-level: 1 token = 1 byte)
    warmup_steps: int = 50
    decay_steps: int = 0  # cosine decay length; 0 = `steps` (set it to continue a schedule longer)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    betas: str = "0.9,0.95"
    grad_clip: float = 1.0


def parse_config(cls, argv):
    """Build `cls` from --key=value / --key value / --flag arguments, type-checked."""
    types = {f.name: f.type for f in fields(cls)}
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SystemExit(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        if key not in types:
            raise SystemExit(f"unknown key --{key} for {cls.__name__}; valid keys: {', '.join(sorted(types))}")
        if not eq:  # --flag or --key value
            if types[key] in (bool, "bool"):
                value = "true"
            elif i + 1 < len(argv):
                i, value = i + 1, argv[i + 1]
            else:
                raise SystemExit(f"--{key} needs a value")
        values[key] = _convert(key, value, types[key])
        i += 1
    return cls(**values)


def _convert(key, value, typ):
    typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ)
    if typ is bool:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
    else:
        try:
            return typ(value)
        except ValueError:
            pass
    raise SystemExit(f"--{key}={value!r}: expected {typ.__name__}")


# -----------------------------------------------------------------------------
# Small pieces the loops share


def pick_device(name):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device, dtype):
    """bf16 autocast (weights stay fp32, matmuls run in bf16), or a no-op for float32."""
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    if dtype != "bfloat16":
        raise SystemExit(f"dtype={dtype!r}: expected 'bfloat16' or 'float32'")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def lr_at(step, cfg):
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio over decay_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.decay_steps or cfg.steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(params, cfg):
    """AdamW; weight decay on matrices only (not on norm weights), as is usual for transformers."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    betas = tuple(float(b) for b in cfg.betas.split(","))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=False)


def rng_state(noise_gen):
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "noise": noise_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state, noise_gen):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    noise_gen.set_state(state["noise"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsLog:
    """out_dir/metrics.jsonl: one JSON object per logged step (appended to on --resume)."""

    def __init__(self, out_dir, resume):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.path.write_text("")

    def write(self, **row):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def start_run(cfg, stage):
    """Seed, pick the device, print the resolved config. Returns the device."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = pick_device(cfg.device)
    print(f"stage {stage} on {device}; config:")
    for k, v in asdict(cfg).items():
        print(f"  {k} = {v!r}")
    return device


def restore(cfg, stage, model, optimizer, noise_gen):
    """--resume: load out_dir/ckpt.pt into model and optimizer. Returns the step to continue from."""
    path = Path(cfg.out_dir) / "ckpt.pt"
    ckpt = load_checkpoint(path)
    if ckpt.get("stage") != stage:
        raise CheckpointError(f"{path} is a {ckpt.get('stage')!r} checkpoint, not {stage!r}")
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path} has no optimizer state (a slim export?); cannot resume from it")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"], noise_gen)
    print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"]


def save_run(cfg, stage, model, optimizer, step, noise_gen):
    save_checkpoint({"model": model.state_dict(), "config": asdict(model.config), "stage": stage,
                     "train_config": asdict(cfg), "step": step, "optimizer": optimizer.state_dict(),
                     "rng": rng_state(noise_gen)}, Path(cfg.out_dir) / "ckpt.pt")


# -----------------------------------------------------------------------------
# Stage 1: pretraining


def pack_rows(texts, tok, seq_len):
    """Turn documents into rows of exactly seq_len tokens (B rows -> (B, seq_len) LongTensor).

    Chat documents (they start with the BOS token) get a row of their own, padded with EOS, as
    at generation time: the model must learn that an answer is followed by EOS padding. Plain
    documents are packed together, separated by EOS, until the row is full."""
    rows, row = [], []
    for text in texts:
        ids = tok.encode(text)[:seq_len]
        is_chat = ids[:1] == [tok.bos_id]
        if row and (is_chat or len(row) + 1 + len(ids) > seq_len):
            rows.append(row)
            row = []
        row = row + [tok.eos_id] + ids if row else ids
        if is_chat:
            rows.append(row)
            row = []
    if row:
        rows.append(row)
    return torch.tensor([r + [tok.eos_id] * (seq_len - len(r)) for r in rows])


def pretrain_batch(step, cfg, tok, corpus_fn):
    """The batch of a step is a pure function of (seed, step): resuming needs no data state."""
    docs = iter(corpus_fn(seed=cfg.seed * 1_000_003 + step))
    rows = torch.empty(0, cfg.seq_len, dtype=torch.long)
    while rows.size(0) < cfg.batch_size:
        rows = torch.cat([rows, pack_rows([next(docs) for _ in range(cfg.batch_size)], tok, cfg.seq_len)])
    return rows[: cfg.batch_size]  # (B, T)


def train_pretrain(cfg: PretrainConfig):
    from tasks import pretrain_corpus, sample_prompts

    device = start_run(cfg, "pretrain")
    tok = Tokenizer.tiny()
    model = Model(Config.preset(cfg.model)).init_weights(seed=cfg.seed).to(device)
    print(f"model: {model.num_params():,} parameters")
    optimizer = make_optimizer(model.parameters(), cfg)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # masking noise
    start = restore(cfg, "pretrain", model, optimizer, noise_gen) if cfg.resume else 0
    metrics = MetricsLog(cfg.out_dir, cfg.resume)
    prompts = sample_prompts(tok)

    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain", dynamic_ncols=True)
    for step in bar:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0 = pretrain_batch(step, cfg, tok, pretrain_corpus).to(device)  # (B, T)
        with autocast(device, cfg.dtype):
            loss = pretrain_loss(model, x0, model.config.mask_token_id, generator=noise_gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            seconds = time.time() - t0
            tqdm.write(f"step {done:5d} | loss {loss.item():.4f} | lr {lr:.2e} | {seconds:6.1f}s")
            metrics.write(stage="pretrain", step=done, loss=loss.item(), lr=lr, seconds=round(seconds, 2))
        if cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
            print_samples(model, tok, prompts, device, cfg.dtype)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_run(cfg, "pretrain", model, optimizer, done, noise_gen)
    print(f"done: {cfg.steps} steps in {time.time() - t0:.0f}s; checkpoint {Path(cfg.out_dir) / 'ckpt.pt'}")
    return model


def print_samples(model, tok, prompts, device, dtype, gen_length=64):
    """Greedy-decode a few chat prompts and print them: the quickest health check there is."""
    model.eval()
    for text in prompts:
        ids = torch.tensor([tok.encode(text)], device=device)
        with autocast(device, dtype):
            out = generate(model, ids, steps=gen_length // 2, gen_length=gen_length, block_length=32)
        answer = tok.decode([t for t in out[0, ids.size(1):].tolist() if t != tok.eos_id])
        tqdm.write(f"  sample: {tok.decode(ids[0].tolist()[-30:])!r} -> {answer!r}")
    model.train()


# -----------------------------------------------------------------------------

STAGES = {"pretrain": (PretrainConfig, train_pretrain)}


def main(argv):
    usage = f"usage: python train.py --stage {{{','.join(STAGES)}}} [--key=value ...]"
    if argv[:1] == ["--stage"] and len(argv) > 1:
        stage, rest = argv[1], argv[2:]
    elif argv and argv[0].startswith("--stage="):
        stage, rest = argv[0].split("=", 1)[1], argv[1:]
    else:
        raise SystemExit(usage)
    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    config_cls, train_fn = STAGES[stage]
    if "--help" in rest or "-h" in rest:
        for f in fields(config_cls):
            print(f"  --{f.name}={f.default!r}  ({f.type if isinstance(f.type, str) else f.type.__name__})")
        return
    try:
        train_fn(parse_config(config_cls, rest))
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
