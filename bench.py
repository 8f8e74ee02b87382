"""
Measure this device: matmul peak, training and forward throughput of the tiny model, sampler
speed, and the three attention implementations side by side. Prints tables (markdown).

    python bench.py                     # auto device; ~2 minutes on a 2-core CPU
    python bench.py --model=llada-8b    # GPU: random-weight 8B forward and sampler speed (bf16)

Training FLOPs are counted the usual way: 6 x (non-embedding parameters) per token for the
matmuls (forward 2, backward 4), plus 12 x n_layers x T x D per token for attention scores and
the weighted sum. "MFU" = achieved FLOP/s / the matmul peak measured in the same run.
"""

import argparse
import time

import torch

from diffusion import generate, pretrain_loss
from model import Config, Model, eager_attention, flex_attention, make_flex_block_mask, sdpa_attention
from train import autocast, pick_device


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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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
            loss = pretrain_loss(model, x, cfg.mask_token_id)
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
    """A big preset (llada-8b) with random bf16 weights: forward and sampler speed only (no room
    for an optimizer). Built on the meta device, then materialised straight on the GPU."""
    with torch.device("meta"):
        model = Model(cfg)
    model = model.to_empty(device=device).to(torch.bfloat16).init_weights(seed=0).eval()
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="tiny", help="preset to time (tiny by default)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=128)
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    cfg = Config.preset(args.model)
    if args.model != "tiny":
        print(f"device: {device}; torch {torch.__version__}; model {args.model}")
        return bench_large(cfg, device)
    B, T = args.batch_size, args.seq_len
    print(f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
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
    print(f"| training GFLOP/s vs fp32 peak | {fp['flops'] / peak[torch.float32]:.0%} | {bf['flops'] / peak[torch.float32]:.0%} | |")
    print(f"| forward tokens/s (batch 16) | {fp['fwd']:,.0f} | {bf['fwd']:,.0f} | {bf['fwd'] / fp['fwd']:.2f}x |")
    print(f"| sampler tokens/s (8 x 64 new, 32 steps) | {fp['sample']:,.0f} | {bf['sample']:,.0f} | {bf['sample'] / fp['sample']:.2f}x |")

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


if __name__ == "__main__":
    main()
