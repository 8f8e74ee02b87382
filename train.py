"""
Train the tiny LLaDA-style model, one stage at a time: pretrain -> sft -> grpo.

    python train.py --stage pretrain     # from scratch, 3,000 steps: ~18 min on a 2-core CPU
    python train.py --stage sft          # from checkpoints/tiny-base.pt: ~5 min
    python train.py --stage grpo         # diffu-GRPO from checkpoints/tiny-sft.pt: ~10 min
    python train.py --stage grpo --init=checkpoints/tiny-base.pt --out_dir=out/grpo-base
    python train.py --stage pretrain --steps=200 --out_dir=out/quick      # a 1-minute look
    python train.py --stage pretrain --resume             # continue out_dir/ckpt.pt exactly
    python train.py --stage grpo --help                   # every key, its type and default
    python train.py --stage sft --device=cuda --dtype=float32            # on a GPU

Every key of the stage's config dataclass (below) can be set with --key=value (or --key value;
a bare --flag sets a bool). Values are type-checked and an unknown key is an error listing the
valid ones. The resolved config is printed at start and saved in every checkpoint.

Each stage has ONE visible training loop in this file; the maths lives in diffusion.py (losses),
sft.py (batches) and grpo.py (the RL objective). Outputs, in out_dir:
    ckpt.pt          model (official LLaDA key names), config, optimizer, step, RNG states
    metrics.jsonl    one JSON object per logged step (stage, step, loss, lr, seconds, ...)
"""

import contextlib
import copy
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

import grpo
import sft
import tasks
from checkpoint import CheckpointError, check_same_config, load_checkpoint, load_model, save_checkpoint
from diffusion import REMASKING, generate, sft_loss
from grpo import answer_text
from lora import add_lora, adapters_off, lora_layers, merge_lora
from model import Config, Model
from plot import plot_rewards
from tokenizer import END_HEADER, Tokenizer

# -----------------------------------------------------------------------------
# Configs: one dataclass per stage, defaults that run on a laptop CPU


@dataclass
class TrainConfig:
    """Keys every stage has."""

    steps: int = 3000  # optimizer steps (pretraining: ~18 min on a 2-core CPU)
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
    export: str = ""  # also write a slim copy (weights + config, no optimizer) here at the end


@dataclass
class PretrainConfig(TrainConfig):
    """Pretraining from scratch on the tiny tasks' text corpus (tasks.pretrain_corpus)."""

    model: str = "tiny"  # a Config preset name (model.py)
    seq_len: int = 160  # tokens per row: >= the longest prompt (32) + the longest generation (128)
    warmup_steps: int = 50
    decay_steps: int = 0  # cosine decay length; 0 = `steps` (set it to continue a schedule longer)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    betas: str = "0.9,0.95"
    grad_clip: float = 1.0


@dataclass
class FinetuneConfig(TrainConfig):
    """What SFT and GRPO share: a starting checkpoint, optional LoRA, and the optimizer."""

    init: str = "checkpoints/tiny-base.pt"  # the checkpoint to start from
    tasks: str = "all"  # tiny tasks, comma-separated (countdown,sudoku,arith) or "all"
    lora_r: int = 0  # 0 = full fine-tuning (the tiny default); d1 fine-tunes LLaDA-8B with LoRA r=128
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "q_proj,k_proj,v_proj,up_proj"  # d1's RL targets (LLaDA names)
    warmup_steps: int = 20
    decay_steps: int = 0
    min_lr_ratio: float = 0.1
    betas: str = "0.9,0.99"
    weight_decay: float = 0.1  # d1 (SFT and RL)


@dataclass
class SFTConfig(FinetuneConfig):
    """d1's masked SFT (sft.py) on ~1,000 tiny-task reasoning traces (s1K has 1,000 questions)."""

    out_dir: str = "out/sft"
    steps: int = 1500  # tiny: 24 epochs of 1,000 examples at batch 16 (d1: 20 epochs of s1K, 2,460 steps)
    batch_size: int = 16  # d1: effective batch 8 (on 4k-token rows)
    lr: float = 5e-4  # tiny, full fine-tuning (d1: 1e-5 with LoRA on 8B)
    n_per_task: int = 334  # ~1,000 examples in all, like s1K
    seq_len: int = 160  # prompt + response + EOS padding (d1 pads to 4,096); = the pretraining rows
    grad_clip: float = 1.0  # d1
    sample_every: int = 500
    ckpt_every: int = 500


@dataclass
class GRPOConfig(FinetuneConfig):
    """diffu-GRPO (grpo.py). Each key says whether it is d1's value or the tiny one."""

    init: str = "checkpoints/tiny-sft.pt"  # d1 runs RL on the merged SFT model (or on the base)
    out_dir: str = "out/grpo"
    steps: int = 50  # tiny: fits 10 minutes on a 2-core CPU (d1: 3,800-7,700 steps on 8 A100s)
    questions_per_step: int = 9  # tiny: 3 per task, so every step mixes the tasks alike (d1: 16 questions, 1 task)
    group_size: int = 6  # G, d1
    gen_length: int = 96  # tiny: the longest SFT trace (Sudoku, 94 tokens with <|eot_id|>) fits (d1: 256)
    block_length: int = 32  # d1
    diffusion_steps: int = 48  # gen_length / 2: two tokens per step, as d1 (256 length, 128 steps)
    temperature: float = 0.9  # d1
    remasking: str = "random"  # tiny (d1: "low_confidence"): grpo.py's docstring, deviation 5
    mu: int = 4  # inner updates per rollout; tiny (d1: 12 GSM8K/MATH, 8 Countdown/Sudoku)
    p_mask_prompt: float = 0.15  # d1's runs (its dataclass default 0.3 was not used; 0.5+ unstable)
    epsilon: float = 0.5  # clip range, d1's run scripts (dataclass default 0.2)
    beta: float = 0.04  # KL weight, d1
    scale_rewards_by_std: bool = False  # d1 runs without std division (Dr. GRPO style)
    lr: float = 2e-5  # tiny, full fine-tuning (d1: 3e-6 with LoRA)
    batch_size: int = 0  # unused: GRPO's batch is questions_per_step x group_size
    grad_clip: float = 0.2  # d1
    warmup_steps: int = 5  # d1: constant schedule with a tiny warmup
    min_lr_ratio: float = 1.0  # constant after warmup, as d1
    logp_chunk: int = 16  # rows per log-prob forward pass (bounds the (rows, T, V) logits in memory)
    log_every: int = 1
    sample_every: int = 10  # print the best and worst completion of a question every N steps
    ckpt_every: int = 20


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


def set_lr(optimizer, step, cfg):
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


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
    """--resume: load out_dir/ckpt.pt into model and optimizer. Returns the step to continue from.

    The checkpoint must come from the same stage and the same model config; with LoRA, the base
    weights are re-read from cfg.init and only the adapters come from the checkpoint."""
    path = Path(cfg.out_dir) / "ckpt.pt"
    ckpt = load_checkpoint(path)
    if ckpt.get("stage") != stage:
        raise CheckpointError(f"{path} is a {ckpt.get('stage')!r} checkpoint, not {stage!r}")
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path} has no optimizer state (a slim export?); cannot resume from it")
    check_same_config(ckpt["config"], model.config, path)
    if "lora_adapters" in ckpt:
        model.load_state_dict(ckpt["lora_adapters"], strict=False)
    else:
        model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"], noise_gen)
    print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"]


def save_run(cfg, stage, model, optimizer, step, noise_gen, path=None, slim=False):
    """Write a checkpoint. "model" always holds plain official weights (LoRA merged in), so eval.py
    and the next stage read it directly; resume state (optimizer, RNG, adapters) unless slim."""
    ckpt = {"model": merged_state_dict(model), "config": asdict(model.config), "stage": stage,
            "train_config": asdict(cfg), "step": step}
    if not slim:
        ckpt.update(optimizer=optimizer.state_dict(), rng=rng_state(noise_gen))
        if lora_layers(model):
            ckpt["lora_adapters"] = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
    save_checkpoint(ckpt, path or Path(cfg.out_dir) / "ckpt.pt")


def merged_state_dict(model):
    if not lora_layers(model):
        return model.state_dict()
    return merge_lora(copy.deepcopy(model)).state_dict()


def init_model(cfg, device):
    """Load the starting checkpoint (cfg.init), and wrap it with LoRA adapters if cfg.lora_r > 0."""
    model, _ = load_model(cfg.init, device=device)
    if cfg.lora_r > 0:
        add_lora(model, targets=tuple(cfg.lora_targets.split(",")), r=cfg.lora_r, alpha=cfg.lora_alpha,
                 dropout=cfg.lora_dropout, seed=cfg.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {model.num_params():,} parameters, {trainable:,} trainable, from {cfg.init}")
    return model


# -----------------------------------------------------------------------------
# Stages 1 and 2: pretraining and SFT share one denoising loop


def pack_rows(texts, tok, seq_len):
    """Turn documents into rows of exactly seq_len tokens: ids (B, seq_len) and prompt lengths (B,).

    Chat documents (chat_prompt(question) + answer) get a row of their own, padded with EOS as at
    generation time, and their prompt is kept clean by the loss (prompt length > 0): that is the
    instruction tuning of LLaDA-8B-Instruct, the model d1 starts from. Without it the model never
    sees a clean question above a fully masked answer, which is exactly what sampling shows it.
    Plain documents are packed together, separated by EOS, with prompt length 0."""
    rows, prompt_lengths, row = [], [], []
    for text in texts:
        question, header, answer = text.rpartition(END_HEADER + "\n\n")
        if header:  # a chat document: encode the prompt as the sampler will see it, then the answer
            prompt = tok.encode(question + header)
            rows.append((prompt + tok.encode(answer))[:seq_len])
            prompt_lengths.append(len(prompt))
            continue
        ids = tok.encode(text)[:seq_len]
        if row and len(row) + 1 + len(ids) > seq_len:
            rows.append(row)
            prompt_lengths.append(0)
            row = []
        row = row + [tok.eos_id] + ids if row else ids
    if row:
        rows.append(row)
        prompt_lengths.append(0)
    ids = torch.tensor([r + [tok.eos_id] * (seq_len - len(r)) for r in rows])
    return ids, torch.tensor(prompt_lengths)


def pretrain_batch(step, cfg, tok, corpus_fn):
    """The batch of a step is a pure function of (seed, step): resuming needs no data state.
    Returns ids (B, T) and prompt lengths (B,) (0 for plain text rows)."""
    docs = iter(corpus_fn(seed=cfg.seed * 1_000_003 + step))
    ids, prompt_lengths = torch.empty(0, cfg.seq_len, dtype=torch.long), torch.empty(0, dtype=torch.long)
    while ids.size(0) < cfg.batch_size:
        more, more_lengths = pack_rows([next(docs) for _ in range(cfg.batch_size)], tok, cfg.seq_len)
        ids, prompt_lengths = torch.cat([ids, more]), torch.cat([prompt_lengths, more_lengths])
    return ids[: cfg.batch_size], prompt_lengths[: cfg.batch_size]


def train_pretrain(cfg: PretrainConfig):
    device = start_run(cfg, "pretrain")
    tok = Tokenizer.tiny()
    model = Model(Config.preset(cfg.model)).init_weights(seed=cfg.seed).to(device)
    print(f"model: {model.num_params():,} parameters (trained from scratch)")
    mask_id = model.config.mask_token_id

    def batch_and_loss(step, noise_gen):
        x0, P = pretrain_batch(step, cfg, tok, tasks.pretrain_corpus)
        x0, P = x0.to(device), P.to(device)  # (B, T), (B,)
        # With prompt length 0 the SFT loss IS LLaDA's pretraining loss (sum of CE / p over B * T).
        return x0.numel(), lambda: sft_loss(model, x0, P, mask_id, generator=noise_gen)

    return denoising_loop(cfg, "pretrain", model, tok, device, batch_and_loss)


def train_sft(cfg: SFTConfig):
    device = start_run(cfg, "sft")
    tok = Tokenizer.tiny()
    model = init_model(cfg, device)
    examples = sft.sft_examples(tasks.get_tiny_tasks(cfg.tasks), cfg.n_per_task, cfg.seed)
    ids, prompt_lengths = sft.encode_dataset(tok, examples, cfg.seq_len)  # (N, T), (N,)
    print(f"SFT set: {len(examples)} examples, {ids.size(1)} tokens per row; e.g. {examples[0]}")
    mask_id = model.config.mask_token_id

    def batch_and_loss(step, noise_gen):
        x0, P = sft.sft_batch(step, cfg.batch_size, ids, prompt_lengths, cfg.seed)
        x0, P = x0.to(device), P.to(device)  # (B, T), (B,)
        return x0.numel(), lambda: sft_loss(model, x0, P, mask_id, generator=noise_gen)

    return denoising_loop(cfg, "sft", model, tok, device, batch_and_loss)


def denoising_loop(cfg, stage, model, tok, device, batch_and_loss):
    """The training loop of pretraining and SFT (they differ only in data and loss).

    batch_and_loss(step, noise_gen) -> (tokens in the batch, a function computing the loss)."""
    optimizer = make_optimizer(model.parameters(), cfg)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the masking noise
    start = restore(cfg, stage, model, optimizer, noise_gen) if cfg.resume else 0
    metrics = MetricsLog(cfg.out_dir, cfg.resume)
    prompts = tasks.sample_prompts()
    model.train()

    t0, tokens_seen = time.time(), 0
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=stage, dynamic_ncols=True)
    for step in bar:
        lr = set_lr(optimizer, step, cfg)
        n_tokens, compute_loss = batch_and_loss(step, noise_gen)
        with autocast(device, cfg.dtype):
            loss = compute_loss()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += n_tokens

        done = step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            seconds = time.time() - t0
            tqdm.write(f"{stage} step {done:5d} | loss {loss.item():.4f} | grad norm {grad_norm:.2f} | "
                       f"lr {lr:.2e} | {tokens_seen / seconds:,.0f} tok/s | {seconds:6.1f}s")
            metrics.write(stage=stage, step=done, loss=loss.item(), grad_norm=grad_norm.item(), lr=lr,
                          tokens_per_s=round(tokens_seen / seconds), seconds=round(seconds, 2))
        if cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
            print_samples(model, tok, prompts, device, cfg.dtype)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_run(cfg, stage, model, optimizer, done, noise_gen)
    finish(cfg, stage, model, optimizer, noise_gen, t0)
    return model


def finish(cfg, stage, model, optimizer, noise_gen, t0):
    print(f"done: {cfg.steps} steps in {time.time() - t0:.0f}s; checkpoint {Path(cfg.out_dir) / 'ckpt.pt'}")
    if cfg.export:
        save_run(cfg, stage, model, optimizer, cfg.steps, noise_gen, path=cfg.export, slim=True)
        print(f"exported the weights (no optimizer state) to {cfg.export}")


@torch.no_grad()
def print_samples(model, tok, prompts, device, dtype, gen_length=64):
    """Greedy-decode a few chat prompts and print them: the quickest health check there is."""
    was_training = model.training
    model.eval()
    for question in prompts:
        ids = torch.tensor([tok.chat(question)], device=device)
        with autocast(device, dtype):
            out = generate(model, ids, steps=gen_length // 2, gen_length=gen_length, block_length=32)
        tqdm.write(f"  sample: {question!r} -> {answer_text(tok, out[0, ids.size(1):].tolist())!r}")
    model.train(was_training)


# -----------------------------------------------------------------------------
# Stage 3: diffu-GRPO (the maths is in grpo.py; this is the loop of Algorithm 1)


def grpo_questions(step, cfg, pools):
    """The questions of a step (a pure function of seed and step): tasks take turns.

    pools: [(task, its training examples)]."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    picks = []
    for i in range(cfg.questions_per_step):
        task, examples = pools[(step * cfg.questions_per_step + i) % len(pools)]
        picks.append((task, rng.choice(examples)))
    return picks


def train_grpo(cfg: GRPOConfig):
    if cfg.group_size < 2:
        raise SystemExit(f"group_size={cfg.group_size}: GRPO needs at least 2 completions per question "
                         "(advantages are rewards minus the group mean; a group of 1 has no signal)")
    if cfg.remasking not in REMASKING:  # refused before any loading, not at the first rollout
        raise SystemExit(f"remasking={cfg.remasking!r}: expected one of {REMASKING} (d1's is 'low_confidence')")
    pools = [(task, task.examples("train")) for task in tasks.get_tiny_tasks(cfg.tasks)]
    device = start_run(cfg, "grpo")
    tok = Tokenizer.tiny()
    model = init_model(cfg, device)
    reference = None if cfg.lora_r > 0 else copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = make_optimizer(model.parameters(), cfg)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the sampler's noise
    start = restore(cfg, "grpo", model, optimizer, noise_gen) if cfg.resume else 0
    metrics = MetricsLog(cfg.out_dir, cfg.resume)
    mask_id, chunk = model.config.mask_token_id, cfg.logp_chunk

    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="grpo", dynamic_ncols=True)
    for step in bar:
        lr = set_lr(optimizer, step, cfg)
        # Algorithm 1, lines 3-6: questions, G completions each, rewards and advantages.
        tick = time.time()
        model.eval()
        questions = grpo_questions(step, cfg, pools)
        with autocast(device, cfg.dtype):
            ro = grpo.rollout(model, tok, questions, cfg.group_size, cfg.gen_length, cfg.block_length,
                              cfg.diffusion_steps, cfg.temperature, noise_gen, cfg.remasking)
        ro.advantages = grpo.group_advantages(ro.rewards, cfg.group_size, cfg.scale_rewards_by_std).to(device)
        ro.completion_mask = ro.completion_mask.to(device)
        seconds_rollout = time.time() - tick

        # Line 8, done once: old-policy and reference log-probs for all mu prompt masks.
        tick = time.time()
        masks = [grpo.prompt_mask(j, cfg.seed * 1_000_003 + step, ro.prompt_ids.shape, cfg.p_mask_prompt, device)
                 for j in range(cfg.mu)]
        with autocast(device, cfg.dtype):
            old = [grpo.chunked_logps(model, ro, m, mask_id, chunk) for m in masks]  # mu x (N, C)
            with adapters_off(model) if reference is None else contextlib.nullcontext():
                ref_model = model if reference is None else reference
                ref = [grpo.chunked_logps(ref_model, ro, m, mask_id, chunk) for m in masks]
        seconds_logps = time.time() - tick

        # Lines 7-9: mu policy-gradient updates on the same rollout, each with its own mask.
        tick = time.time()
        sums, n_tokens = policy_updates(model, optimizer, ro, masks, old, ref, cfg)
        seconds_update = time.time() - tick

        done = step + 1
        row = grpo_metrics(ro, cfg, sums, n_tokens.item(), seconds_rollout, seconds_logps, seconds_update)
        metrics.write(stage="grpo", step=done, lr=lr, seconds=round(time.time() - t0, 2), **row)
        bar.set_postfix(reward=f"{row['reward']:.3f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            tqdm.write(grpo_log_line(done, row))
        if cfg.sample_every and done % cfg.sample_every == 0:
            print_best_and_worst(ro, cfg.group_size)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_run(cfg, "grpo", model, optimizer, done, noise_gen)
    plot_rewards(Path(cfg.out_dir) / "metrics.jsonl")
    finish(cfg, "grpo", model, optimizer, noise_gen, t0)
    return model


def policy_updates(model, optimizer, ro, masks, old, ref, cfg):
    """Algorithm 1, lines 7-9: mu optimizer steps on one rollout, step j with prompt mask j.

    Rows go through the model logp_chunk at a time and their gradients add up (backward per
    chunk), so a big batch's full-vocabulary logits never exist at once. Returns the summed
    statistics and the number of completion tokens in the loss."""
    model.train()
    mask_id, chunk = model.config.mask_token_id, cfg.logp_chunk
    n_tokens = ro.completion_mask.sum().clamp(min=1)
    sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0}
    for j in range(cfg.mu):
        for i in range(0, ro.completion_ids.size(0), chunk):
            rows = slice(i, i + chunk)
            with autocast(ro.completion_ids.device, cfg.dtype):
                logp = grpo.sequence_logps(model, ro, masks[j], mask_id, rows)  # (n, C)
            loss, stats = grpo.grpo_loss(logp, old[j][rows], ref[j][rows], ro.advantages[rows],
                                         ro.completion_mask[rows], cfg.epsilon, cfg.beta, n_tokens)
            loss.backward()  # chunk by chunk: gradients add up to those of the pooled token mean
            sums["loss"] += loss.item()
            sums["kl"] += stats["kl"]
            sums["clipped"] += stats["clipped"]
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sums, n_tokens


def grpo_metrics(ro, cfg, sums, n_tokens, seconds_rollout, seconds_logps, seconds_update):
    """The health metrics of one GRPO step (d1 logs the same ones)."""
    group_std = ro.rewards.view(-1, cfg.group_size).std(dim=1)
    row = {"reward": ro.rewards.mean().item(), "reward_std": ro.rewards.std().item(),
           "accuracy": ro.accuracy.mean().item(), "zero_std_share": (group_std < 1e-6).float().mean().item(),
           "kl": sums["kl"] / (n_tokens * cfg.mu), "clip_ratio": sums["clipped"] / (n_tokens * cfg.mu),
           "loss": sums["loss"] / cfg.mu, "completion_length": ro.completion_mask.sum(1).float().mean().item(),
           "seconds_rollout": round(seconds_rollout, 2), "seconds_logps": round(seconds_logps, 2),
           "seconds_update": round(seconds_update, 2)}
    for name, values in ro.reward_parts.items():
        row[f"reward/{name}"] = values.mean().item()
        row[f"reward/{name}_std"] = values.std().item()
    return row


def grpo_log_line(step, row):
    """The fixed-format line of one GRPO step; seconds are rollout + log-probs + update."""
    return (f"grpo step {step:4d} | reward {row['reward']:.3f} +- {row['reward_std']:.3f} | "
            f"acc {row['accuracy']:.3f} | zero-std {row['zero_std_share']:.2f} | kl {row['kl']:.4f} | "
            f"clip {row['clip_ratio']:.3f} | len {row['completion_length']:.1f} | "
            f"s {row['seconds_rollout']:.1f}+{row['seconds_logps']:.1f}+{row['seconds_update']:.1f}")


def print_best_and_worst(ro, group_size):
    """The best and worst completion of the first question of the step."""
    r = ro.rewards[:group_size]
    best, worst = r.argmax().item(), r.argmin().item()
    tqdm.write(f"  best  ({r[best]:.2f}): {ro.texts[best]!r}\n  worst ({r[worst]:.2f}): {ro.texts[worst]!r}")


# -----------------------------------------------------------------------------

STAGES = {"pretrain": (PretrainConfig, train_pretrain), "sft": (SFTConfig, train_sft), "grpo": (GRPOConfig, train_grpo)}


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
    except (CheckpointError, tasks.TaskError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
