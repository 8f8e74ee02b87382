"""
Measure this device: matmul peak, training and forward throughput of the tiny model, sampler
speed, and the three attention implementations side by side. Prints tables (markdown).

    python bench.py                     # auto device; ~2 minutes on a 2-core CPU
    python bench.py --model=llada-8b    # GPU: random-weight 8B forward and sampler speed (bf16)
    python bench.py --memory            # peak host memory of checkpoint.load_pretrained
    python bench.py --sampling --n=64   # reference vs fast samplers on the tiny tasks: tokens/s, accuracy
    python bench.py --sampling --model=llada-8b     # GPU: the same samplers on random 8B weights (speed only)
    python bench.py --fullscale         # GPU: one d1 GRPO step and one SFT step on random LLaDA-8B weights
    python bench.py --fullscale --model=tiny --gen_length=32 --prompt_length=16 --sft_len=64   # the same, CPU

Training FLOPs are counted the usual way: 6 x (non-embedding parameters) per token for the
matmuls (forward 2, backward 4), plus 12 x n_layers x T x D per token for attention scores and
the weighted sum. "MFU" = achieved FLOP/s / the matmul peak measured in the same run.

--fullscale (bench_fullscale.py) times d1's full-scale GRPO and SFT steps on random bf16 weights, part
by part, and sets the peak GPU memory of each part beside memory.py's plan for the same shapes.
"""

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench_fullscale import bench_fullscale, check_fullscale_shapes, fullscale_shapes, random_large_model, sync
from checkpoint import check_checkpoint_path, load_model, load_pretrained, save_pretrained
from common import ConfigError, autocast, check_choice, check_range, cli, one_line_errors, pick_device, pick_dtype
from diffusion import check_fast_sampler, check_sampler, diffusion_loss, generate
from eval import evaluate
from tasks_tiny import get_tiny_tasks
from tokenizer import Tokenizer
from model import Config, Model, eager_attention, flex_attention, make_flex_block_mask, sdpa_attention


@dataclass
class BenchConfig:
    """Measure this device: matmul peak, the tiny model's speeds, attention kernels; or memory."""

    device: str = "auto"  # auto -> cuda, then mps, then cpu
    model: str = ""  # preset to time: tiny, or llada-8b (random weights, GPU); empty = tiny (--fullscale: llada-8b)
    batch_size: int = 32  # rows per training step
    seq_len: int = 128  # tokens per row
    memory: bool = False  # instead: the peak host memory of loading a Hugging Face-format checkpoint
    sampling: bool = False  # instead: the reference sampler vs the fast ones (KV cache, threshold)
    ckpt: str = "checkpoints/tiny-sft.pt"  # --sampling, tiny: the checkpoint evaluated
    n: int = 64  # --sampling, tiny: test questions per task (the same ones for every sampler)
    gen_length: int = 0  # answer length; 0 = 128 (--sampling, tiny), d1's 256 (--fullscale; tiny: 64)
    threshold: float = 0.9  # --sampling: the parallel decoding threshold of the threshold rows (Fast-dLLM's)
    fullscale: bool = False  # instead: one d1 GRPO step and one SFT step, timed per part, peak memory vs memory.py
    prompt_length: int = 0  # --fullscale: GRPO prompt tokens; 0 = d1's cut, 200 (tiny: 32)
    diffusion_steps: int = 0  # --fullscale: sampler steps of the rollout; 0 = gen_length / 2 (d1: 128 for 256)
    lora_r: int = 0  # --fullscale: LoRA rank; 0 = d1's 128 (tiny: 8)
    sft_len: int = 0  # --fullscale: tokens of the SFT row; 0 = d1's 4,096 (tiny: 256)

    def __post_init__(self):
        self.model = self.model or ("llada-8b" if self.fullscale else "tiny")
        check_choice("model", self.model, tuple(Config.PRESETS))
        device = pick_device(self.device)
        check_range(self, 1, None, "batch_size", "n")
        check_range(self, 2, Config.preset(self.model).max_sequence_length, "seq_len")
        check_range(self, 0, None, "gen_length", "prompt_length", "diffusion_steps", "lora_r", "sft_len")
        if self.fullscale:
            if self.model != "tiny" and device.type != "cuda":
                raise ConfigError(f"--fullscale needs a CUDA GPU for {self.model} shapes (this machine runs on "
                                  f"{device.type}); --model=tiny runs it small on CPU")
            check_fullscale_shapes(fullscale_shapes(self), Config.preset(self.model))
        else:
            self.gen_length = self.gen_length or 128
            check_sampler(self.gen_length, min(32, self.gen_length), self.gen_length // 2)
        check_fast_sampler(None, self.threshold)
        if self.sampling and self.model == "tiny":
            check_checkpoint_path(self.ckpt)


def timed(fn, device, min_seconds=1.0, warmup=2):
    """Median-free simple timer: warm up, then repeat until min_seconds; returns seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or n < 3:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n


def matmul_peak(device, dtype, n):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device)


def train_flops_per_token(cfg, T):
    non_embedding = cfg.n_layers * (4 * cfg.d_model**2 + 3 * cfg.d_model * cfg.mlp_hidden_size)
    head = cfg.d_model * cfg.embedding_size
    return 6 * (non_embedding + head) + 12 * cfg.n_layers * T * cfg.d_model


def bench_training(cfg, device, dtype, B, T):
    model = Model(cfg).init_weights(seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (B, T), device=device)

    def step():
        with autocast(device, dtype):
            loss = diffusion_loss(model, x, torch.zeros(B, dtype=torch.long, device=device), cfg.mask_token_id)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(step, device, min_seconds=3.0)
    return B * T / seconds, B * T * train_flops_per_token(cfg, T) / seconds


@torch.no_grad()
def bench_forward(cfg, device, dtype, B, T):
    model = Model(cfg).init_weights(seed=0).to(device).eval()
    x = torch.randint(0, 256, (B, T), device=device)

    def fwd():
        with autocast(device, dtype):
            model(x)

    return B * T / timed(fwd, device, min_seconds=2.0)


@torch.no_grad()
def bench_sampler(cfg, device, dtype, B=8, P=48, gen_length=64, steps=32):
    model = Model(cfg).init_weights(seed=0).to(device).eval()
    prompt = torch.randint(0, 256, (B, P), device=device)

    def sample():
        with autocast(device, dtype):
            generate(model, prompt, steps=steps, gen_length=gen_length, block_length=32)

    return B * gen_length / timed(sample, device, min_seconds=2.0, warmup=1)


def bench_attention(device, B, H, T, Dh, backward, dtype):
    """Seconds per call (forward, or forward+backward) for each implementation, padding mask on."""
    q, k, v = (torch.randn(B, H, T, Dh, device=device, dtype=dtype, requires_grad=backward) for _ in range(3))
    key_mask = torch.ones(B, T, dtype=torch.bool, device=device)
    key_mask[0, : T // 4] = False  # one left-padded row, so every kernel runs its masked path
    block_mask = make_flex_block_mask(key_mask, H, T, device)
    impls = {"eager": lambda: eager_attention(q, k, v, key_mask),
             "sdpa": lambda: sdpa_attention(q, k, v, key_mask),
             "flex": lambda: flex_attention(q, k, v, block_mask)}
    results = {}
    for name, fn in impls.items():
        if backward and name == "flex" and device.type == "cpu":
            results[name] = None  # no flex backward on CPU
            continue

        def call(fn=fn):
            out = fn()
            if backward:
                out.sum().backward()

        grad = torch.enable_grad() if backward else torch.no_grad()
        with grad:
            results[name] = timed(call, device, min_seconds=1.0, warmup=2)
    flops = 4 * B * H * T * T * Dh * (3 if backward else 1)
    return {k: (None if s is None else flops / s) for k, s in results.items()}


@torch.no_grad()
def bench_large(cfg, device):
    """A big preset (llada-8b) with random bf16 weights: forward and sampler speed."""
    model = random_large_model(cfg, device)
    print(f"\n| {cfg.n_layers}-layer d={cfg.d_model} model, bf16 weights | ms | tokens/s | TFLOP/s |\n|---|---|---|---|")
    for impl in ("sdpa", "flex"):
        model.config.attn_impl = impl
        for B, T in ((1, 356), (1, 612), (8, 612)):
            x = torch.randint(0, 1000, (B, T), device=device)
            seconds = timed(lambda: model(x), device, min_seconds=2.0)
            flops = B * T * train_flops_per_token(cfg, T) / 3  # forward = a third of training
            print(f"| forward {impl} {B} x {T} | {seconds * 1e3:.1f} | {B * T / seconds:,.0f} | {flops / seconds / 1e12:.0f} |")
    model.config.attn_impl = "sdpa"
    for B, steps in ((1, 256), (1, 64), (8, 64)):
        prompt = torch.randint(0, 1000, (B, 100), device=device)
        seconds = timed(lambda: generate(model, prompt, steps=steps, gen_length=256, block_length=32), device,
                        min_seconds=1.0, warmup=1)
        print(f"| sampler batch {B}, gen 256, {steps} steps | {seconds * 1e3:.0f} | {B * 256 / seconds:,.0f} | |")


def main(argv=None):
    with one_line_errors("bench.py"):
        args = cli(BenchConfig, sys.argv[1:] if argv is None else argv)
        if args.memory:
            return measure_memory()
        device = pick_device(args.device)
        cfg = Config.preset(args.model)
        print(f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
        if args.fullscale:
            bench_fullscale(cfg, device, fullscale_shapes(args))
        elif args.sampling and args.model == "tiny":
            bench_sampling_tiny(device, args)
        elif args.sampling:
            bench_sampling_large(cfg, device, args.threshold)
        elif args.model == "tiny":
            bench_tiny(cfg, device, args)
        else:
            bench_large(cfg, device)


def bench_tiny(cfg, device, args):
    """The tables for the tiny model: matmul peak, training / forward / sampler speed, attention."""
    torch.manual_seed(0)
    B, T = args.batch_size, args.seq_len
    print(f"model: {args.model}, {Model(cfg).num_params() / 1e6:.2f}M params, batch {B} x {T} tokens\n")

    peak = {}
    print("| matmul | size | GFLOP/s |\n|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for n in ((1024, 2048) if device.type == "cpu" else (4096, 8192)):
            gflops = matmul_peak(device, dtype, n) / 1e9
            peak[dtype] = max(peak.get(dtype, 0), gflops)
            print(f"| {str(dtype)[6:]} | {n} | {gflops:,.0f} |")

    print("\n| tiny model | fp32 | bf16 autocast | bf16 speed-up |\n|---|---|---|---|")
    rows = {}
    for dtype in ("float32", "bfloat16"):
        tps, flops = bench_training(cfg, device, dtype, B, T)
        rows[dtype] = dict(train=tps, flops=flops / 1e9,
                           fwd=bench_forward(cfg, device, dtype, 16, T),
                           sample=bench_sampler(cfg, device, dtype))
    fp, bf = rows["float32"], rows["bfloat16"]
    print(f"| training tokens/s | {fp['train']:,.0f} | {bf['train']:,.0f} | {bf['train'] / fp['train']:.2f}x |")
    print(f"| training GFLOP/s (MFU vs same-dtype peak) | {fp['flops']:,.0f} ({fp['flops'] / peak[torch.float32]:.0%}) "
          f"| {bf['flops']:,.0f} ({bf['flops'] / peak[torch.bfloat16]:.0%}) | |")
    print(f"| forward tokens/s (batch 16) | {fp['fwd']:,.0f} | {bf['fwd']:,.0f} | {bf['fwd'] / fp['fwd']:.2f}x |")
    print(f"| sampler tokens/s (8 x 64 new, 32 steps) | {fp['sample']:,.0f} | {bf['sample']:,.0f} | {bf['sample'] / fp['sample']:.2f}x |")
    print(f"\n--dtype=auto (every entry point's default) runs {pick_dtype('auto', device)} on this device")

    backward = device.type != "cpu"
    att_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    sizes = [(8, 4, 128, 64), (8, 4, 256, 64), (4, 8, 512, 64)] if device.type == "cpu" else \
        [(8, 32, 512, 128), (8, 32, 1024, 128), (2, 32, 2048, 128)]
    what = "forward + backward" if backward else "forward"
    print(f"\n| attention, {what}, {str(att_dtype)[6:]}, padding mask (GFLOP/s) | eager | sdpa | flex |\n|---|---|---|---|")
    for B_, H, T_, Dh in sizes:
        r = bench_attention(device, B_, H, T_, Dh, backward, att_dtype)
        cells = " | ".join("n/a" if r[k] is None else f"{r[k] / 1e9:,.0f}" for k in ("eager", "sdpa", "flex"))
        print(f"| B {B_} H {H} T {T_} Dh {Dh} | {cells} |")


# -----------------------------------------------------------------------------
# python bench.py --sampling: the reference sampler vs Fast-dLLM's (Wu et al. 2025, arXiv 2505.22618)

SAMPLERS = (("reference (d1)", None, False, False), ("early stop (exact)", None, False, True),
            ("prefix cache", "prefix", False, False), ("dual cache", "dual", False, False),
            ("threshold", None, True, False), ("prefix cache + threshold", "prefix", True, False),
            ("dual cache + threshold", "dual", True, False), ("dual cache + early stop", "dual", False, True),
            ("dual cache + threshold + early stop", "dual", True, True))  # (name, cache, threshold?, early stop?)


def bench_sampling_tiny(device, args):
    """The tiny tasks' evaluation (eval.evaluate: greedy, low-confidence, blocks of 32, gen_length / 2
    steps, bf16 autocast, 64 questions per batch) with every sampler, on the same test questions:
    tokens/s of the whole evaluation (sampling and scoring) and accuracy %, side by side."""
    model, _ = load_model(args.ckpt, device=device)
    tok, tasks = Tokenizer.tiny(), get_tiny_tasks("all")
    examples = {task.name: task.examples("test", args.n) for task in tasks}
    evaluate(model, tok, tasks[0], examples[tasks[0].name][:4], 32)  # warm-up (one-time costs)
    print(f"{args.ckpt}, n = {args.n} per task, gen_length {args.gen_length}, threshold {args.threshold}\n")
    print("| sampler | steps per batch | seconds | tokens/s | speed-up | "
          + " | ".join(task.name for task in tasks) + " | average |\n" + "|---" * (len(tasks) + 6) + "|")
    reference = None
    for name, cache, with_threshold, early_stop in SAMPLERS:
        threshold = args.threshold if with_threshold else None
        tick = time.perf_counter()
        results = [evaluate(model, tok, task, examples[task.name], args.gen_length, cache=cache, threshold=threshold,
                            early_stop=early_stop) for task in tasks]
        seconds = time.perf_counter() - tick
        tokens_per_second = len(tasks) * args.n * args.gen_length / seconds
        reference = reference or tokens_per_second
        steps = sum(r["steps"] for r in results) / len(results)
        accuracy = " | ".join(f"{r['accuracy']:.1f} ({r['stderr']:.1f})" for r in results)
        average = sum(r["accuracy"] for r in results) / len(results)
        print(f"| {name} | {steps:.1f} | {seconds:.1f} | {tokens_per_second:,.0f} | "
              f"{tokens_per_second / reference:.2f}x | {accuracy} | {average:.1f} |", flush=True)


@torch.no_grad()
def bench_sampling_large(cfg, device, threshold, prompt_length=100):
    """Every sampler on random bf16 weights (GPU): batch 1 and 8, gen 256 and 512, one token per step
    (steps = gen_length, Fast-dLLM's baseline), blocks of 32. Random weights predict nearly uniform
    tokens, so nothing clears a threshold: its rows show parallel decoding's worst case (one token
    per step); only the cache rows measure a real speed-up. Speed only, one timed run each."""
    model = random_large_model(cfg, device)
    print("\n| batch | gen | sampler | steps | seconds | tokens/s | speed-up |\n|---|---|---|---|---|---|---|")
    for B in (1, 8):
        prompt = torch.randint(0, 1000, (B, prompt_length), device=device)
        for cache in ("prefix", "dual", None):  # warm-up: every path once
            generate(model, prompt, steps=32, gen_length=64, block_length=32, cache=cache, threshold=threshold)
        for gen_length in (256, 512):
            reference = None
            for name, cache, with_threshold in SAMPLERS:
                taken = []
                sync(device)
                tick = time.perf_counter()
                generate(model, prompt, steps=gen_length, gen_length=gen_length, block_length=32, cache=cache,
                         threshold=threshold if with_threshold else None, on_step=lambda x, step: taken.append(step))
                sync(device)
                seconds = time.perf_counter() - tick
                reference = reference or seconds
                print(f"| {B} | {gen_length} | {name} | {len(taken)} | {seconds:.2f} | {B * gen_length / seconds:,.0f} "
                      f"| {reference / seconds:.2f}x |", flush=True)


# -----------------------------------------------------------------------------
# python bench.py --memory: peak host memory of load_pretrained, in a fresh process


def peak_rss():
    """This process's peak resident memory in bytes, from VmHWM (Linux). Not getrusage's ru_maxrss:
    that survives fork+exec, so a child would start at its parent's peak."""
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def load_and_measure(warmup_dir, checkpoint_dir, dtype):
    """Run in a fresh process by measure_memory: load a checkpoint, print the peak RSS as JSON."""
    imported = peak_rss()  # torch alone is a few hundred MB
    load_pretrained(warmup_dir)  # a tiny warm-up load pays the one-time costs (safetensors' library, ...)
    baseline = peak_rss()
    model = load_pretrained(checkpoint_dir, dtype=None if dtype == "None" else dtype)
    after_load = peak_rss()
    [p.max().item() for p in model.parameters()]  # read every weight (as a forward would), no copies
    print(json.dumps({"fixed": baseline - imported, "baseline": baseline, "after_load": after_load,
                      "after_use": peak_rss()}))


def measure_memory(root="/tmp/nano-d1-memory"):
    """Save a scaled LLaDA (D 1024, 12 layers, vocab 32k, bf16: 0.46 GB) as one file and in 6 shards
    (as the 8B is), load it in a fresh process, and print the peak RSS growth / checkpoint size."""
    save_pretrained(Model(Config.preset("tiny")).init_weights(seed=0), f"{root}/warmup")
    cfg = Config(d_model=1024, n_layers=12, n_heads=8, n_kv_heads=8, mlp_hidden_size=3072,
                 vocab_size=32768, embedding_size=32768)
    model = Model(cfg).init_weights(seed=0).to(torch.bfloat16)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    save_pretrained(model, f"{root}/single", max_shard_size=size)
    save_pretrained(model, f"{root}/sharded", max_shard_size=size // 6 + 1)
    del model
    print(f"checkpoint: {size / 1e9:.3f} GB of bf16 ({cfg.n_layers} layers, D {cfg.d_model}, V {cfg.vocab_size})")
    for layout, dtype in [("single", "None"), ("sharded", "None"), ("sharded", "float32")]:
        child = "import sys, bench; bench.load_and_measure(*sys.argv[1:])"
        argv = [sys.executable, "-c", child, f"{root}/warmup", f"{root}/{layout}", dtype]
        out = subprocess.run(argv, check=True, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent).stdout
        r = json.loads(out)
        load, use = ((r[k] - r["baseline"]) / size for k in ("after_load", "after_use"))
        print(f"{layout:>7}, dtype {dtype:<7}: peak RSS growth = {load:.2f} x checkpoint after "
              f"load_pretrained, {use:.2f} x once every weight is read "
              f"(one-time cost before: {r['fixed'] / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
