"""
d1's full-scale steps, timed and measured: one diffu-GRPO step (1 question x G completions, mu = 1)
and one SFT step with the d1 presets of grpo.py and sft.py (LoRA, activation checkpointing, bf16) on
random LLaDA-8B weights, split into the GRPO step's rollout (Algorithm 1 line 5), old and reference
log-probs (line 8) and update (line 9). Beside each part's seconds it prints the peak GPU memory the
part allocated and memory.py's plan for the same shapes, so the plan can be checked on a real card,
and it ends with the GPU-hours d1's whole runs would take at that speed, beside d1's own.

    python bench.py --fullscale                       # GPU: LLaDA-8B shapes (d1: 6 x (200 + 256) tokens, 4,096 SFT)
    python bench.py --fullscale --model=tiny --device=cpu --gen_length=32 --prompt_length=16 --sft_len=64
                                                      # the same steps, small, on CPU (no peak memory there)
    python bench.py --fullscale --lora_r=8 --diffusion_steps=64 --sft_len=2048     # bench.py's keys

The keys are bench.py's (python bench.py --help); its main() calls bench_fullscale() here. The
rewards are random (random weights write meaningless text) and the prompts random byte tokens: every
tensor has the run's shape, which is all that time and memory depend on. bench.py also uses sync()
and random_large_model() from this file.
"""

import gc
import time
from dataclasses import fields
from types import SimpleNamespace

import torch

from common import ConfigError, autocast, make_optimizer, row_slices
from diffusion import check_sampler, diffusion_loss, generate
from eval import Completions
from estimators import chunked_logps, prompt_mask
from grpo import D1_STEPS, GRPOConfig, completion_mask, d1_grpo_preset, group_advantages, policy_update
from lora import adapters_off, add_lora, merge_lora
from memory import GB, memory_plan
from model import Model
from sft import SFTConfig, d1_sft_preset


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_large_model(cfg, device):
    """A big preset (llada-8b) with random bf16 weights, built on the meta device, then materialised
    straight on the device, in eval mode."""
    with torch.device("meta"):
        model = Model(cfg)
    return model.to_empty(device=device).to(torch.bfloat16).init_weights(seed=0).eval()


def fullscale_shapes(args):
    """The shapes of --fullscale: d1's presets (grpo.py and sft.py, GSM8K's), with one question of G
    completions per step, mu = 1 (the time of one inner update), and the keys given on the command
    line; 0 = d1's value, or a small one for --model=tiny."""
    grpo = {**field_defaults(GRPOConfig), **d1_grpo_preset({"task": "gsm8k"})}
    sft = {**field_defaults(SFTConfig), **d1_sft_preset({})}
    tiny = args.model == "tiny"
    gen_length = args.gen_length or (64 if tiny else grpo["gen_length"])
    return SimpleNamespace(
        grpo=SimpleNamespace(**{**grpo, "questions_per_step": 1, "mu": 1, "dtype": "bfloat16",
                                "gen_length": gen_length, "block_length": min(grpo["block_length"], gen_length),
                                "diffusion_steps": args.diffusion_steps or gen_length // 2,
                                "max_prompt_length": args.prompt_length or (32 if tiny else grpo["max_prompt_length"]),
                                "lora_r": args.lora_r or (8 if tiny else grpo["lora_r"]),
                                "cache": None, "threshold": None}),
        sft=SimpleNamespace(**{**sft, "dtype": "bfloat16", "batch_size": 1, "micro_batch": 1,
                               "seq_len": args.sft_len or (256 if tiny else sft["seq_len"]),
                               "lora_r": args.lora_r or (8 if tiny else sft["lora_r"])}))


def field_defaults(cls):
    """{key: default} of a stage config dataclass (the values a run has where the preset sets none)."""
    return {f.name: f.default for f in fields(cls)}


def check_fullscale_shapes(shapes, config):
    """Refuse --fullscale shapes the sampler or the model's context cannot run (before any work)."""
    g, s = shapes.grpo, shapes.sft
    check_sampler(g.gen_length, g.block_length, g.diffusion_steps,
                  keys=("gen_length", "block_length", "diffusion_steps"))
    context = config.max_sequence_length
    if g.max_prompt_length + g.gen_length > context:
        raise ConfigError(f"--prompt_length={g.max_prompt_length} + --gen_length={g.gen_length}: more than the "
                          f"model's context of {context} tokens")
    if s.seq_len > context:
        raise ConfigError(f"--sft_len={s.seq_len}: more than the model's context of {context} tokens")


def measured(device, fn):
    """Run fn(); return (its result, seconds, the peak memory it allocated in GB or None off CUDA)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tick = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - tick
    peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
    return out, seconds, peak


def grpo_step(model, g, device, noise_gen, optimizer, seed=0):
    """One diffu-GRPO step of grpo.train_grpo on random prompts: {part: (seconds, peak GB)}. The
    rewards are random (the model's text means nothing); every tensor has the run's shape."""
    N, P, mask_id = g.questions_per_step * g.group_size, g.max_prompt_length, model.config.mask_token_id
    prompt = torch.randint(0, 256, (N, P), device=device)  # (N, P): byte tokens, valid in every vocabulary
    parts = {}

    def rollout():  # line 5: the sampler (eval.complete's call of diffusion.generate, rollout_batch rows at a time)
        model.eval()
        with autocast(device, g.dtype):
            out = torch.cat([generate(model, prompt[rows], steps=g.diffusion_steps, gen_length=g.gen_length,
                                      block_length=g.block_length, temperature=g.temperature, remasking=g.remasking,
                                      generator=noise_gen)
                             for rows in row_slices(N, g.rollout_batch)])  # (N, P + C)
        reward = torch.rand(N, generator=torch.Generator().manual_seed(seed))
        return Completions(prompt, torch.ones_like(prompt), out[:, P:], [""] * N, {"random": reward}, reward,
                           torch.zeros(N), torch.zeros(N, dtype=torch.bool), g.diffusion_steps)

    ro, *parts["rollout"] = measured(device, rollout)
    advantages = group_advantages(ro.reward, g.group_size).to(device)  # (N,)
    loss_mask = completion_mask(ro.completion_ids, model.config.eos_token_id)  # (N, C)
    mask = prompt_mask(seed, 0, 0, ro.prompt_ids.shape, g.p_mask_prompt, device)  # (N, P)

    def logps():  # line 8: old and reference log-probs, no grad
        with autocast(device, g.dtype):
            old = chunked_logps(model, ro, mask, mask_id, g.logp_chunk)  # (N, C)
            with adapters_off(model):
                ref = chunked_logps(model, ro, mask, mask_id, g.logp_chunk)  # (N, C)
        return old, ref

    (old, ref), *parts["log-probs"] = measured(device, logps)

    def update():  # line 9: one inner update, logp_chunk rows per forward/backward, as train_grpo runs it
        model.train()
        return policy_update(model, optimizer, ro, mask, old, ref, advantages, loss_mask, g, device)

    _, *parts["update"] = measured(device, update)
    return parts


def sft_step(model, s, device, optimizer, mask_id):
    """One masked-SFT step of pretrain.denoising_loop on one random row: (seconds, peak GB). The noise
    level is drawn near 1 (t > 0.95), so nearly every token is masked: the worst case the plan is for."""
    x0 = torch.randint(0, 256, (1, s.seq_len), device=device)  # (1, T): byte tokens, valid in every vocabulary
    seed = next(i for i in range(1000) if torch.rand(1, 1, device=device,
                                                     generator=torch.Generator(device).manual_seed(i)) > 0.95)
    noise_gen = torch.Generator(device).manual_seed(seed)

    def step():
        model.train()
        with autocast(device, s.dtype):
            loss = diffusion_loss(model, x0, torch.zeros(1, dtype=torch.long, device=device), mask_id, noise_gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _, seconds, peak = measured(device, step)
    return seconds, peak


def bench_fullscale(cfg, device, shapes):
    """d1's GRPO step (1 question x G completions, mu = 1) and SFT step on random bf16 weights: seconds
    per part, peak memory (CUDA) beside memory.py's plan for the same shapes. Each step runs twice
    and the second is reported (the first pays one-time costs and creates AdamW's state)."""
    g, s = shapes.grpo, shapes.sft
    model = random_large_model(cfg, device)  # bf16, eval mode
    model.checkpointing = True
    print(f"model: {args_name(cfg)} with random bf16 weights, {model.num_params() / 1e6:,.1f}M parameters; "
          f"LoRA r={g.lora_r} on {g.lora_targets} (GRPO), r={s.lora_r} on {s.lora_targets} (SFT); checkpointing on\n")
    rows = []

    # diffu-GRPO: d1's LoRA, optimizer and step
    add_lora(model, tuple(g.lora_targets.split(",")), g.lora_r, g.lora_alpha, g.lora_dropout)
    optimizer = make_optimizer(model, g)
    noise_gen = torch.Generator(device).manual_seed(0)
    grpo_step(model, g, device, noise_gen, optimizer)  # warm-up
    parts = grpo_step(model, g, device, noise_gen, optimizer)
    plan = memory_plan(cfg, "grpo", g, g.max_prompt_length, torch.bfloat16)
    planned = {"rollout": plan.rollout, "log-probs": plan.logp_forward, "update": plan.activations + plan.logits}
    N, P, C = g.questions_per_step * g.group_size, g.max_prompt_length, g.gen_length
    what = {"rollout": f"{N} rows x ({P} + {C}), {g.diffusion_steps} steps, block {g.block_length}",
            "log-probs": f"old + ref, no grad, {g.logp_chunk} rows per forward",
            "update": f"forward + backward + AdamW, {g.logp_chunk} rows per backward"}
    for part, (seconds, peak) in parts.items():
        rows.append((f"GRPO {part} ({what[part]})", seconds, peak, (plan.fixed + planned[part]) / GB))
    peaks = [peak for _, peak in parts.values()]
    rows.append(("GRPO step", sum(sec for sec, _ in parts.values()), None if None in peaks else max(peaks),
                 plan.peak / GB))

    # SFT: drop the RL adapters (merged: random weights either way), then d1's SFT LoRA and step
    del optimizer
    merge_lora(model)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    add_lora(model, tuple(s.lora_targets.split(",")), s.lora_r, s.lora_alpha, s.lora_dropout)
    optimizer = make_optimizer(model, s)
    sft_step(model, s, device, optimizer, cfg.mask_token_id)  # warm-up
    seconds, peak = sft_step(model, s, device, optimizer, cfg.mask_token_id)
    sft_plan = memory_plan(cfg, "sft", s, weights_dtype=torch.bfloat16)
    rows.append((f"SFT step (1 x {s.seq_len} tokens, forward + backward + AdamW)", seconds, peak, sft_plan.peak / GB))

    print("| part | seconds | peak allocated GB | memory.py's plan GB |\n|---|---|---|---|")
    for name, seconds, peak, plan_gb in rows:
        print(f"| {name} | {seconds:.2f} | {'n/a (CPU)' if peak is None else f'{peak:.2f}'} | {plan_gb:.2f} |")
    print(f"\nThe plan's column: weights + optimizer state + that part, without the allowance; "
          f"torch.cuda.max_memory_allocated does not see the CUDA context or fragmentation. With the "
          f"allowance memory.py asks for {plan.total / GB:.2f} GB (GRPO) and {sft_plan.total / GB:.2f} GB (SFT).")
    print_d1_gpu_hours(cfg, device, {part: seconds for part, (seconds, _) in parts.items()}, seconds, s)
    return rows


D1_GPU_HOURS = "8 A100-80G for 1 to 2 days per task: 192 to 384 GPU-hours"  # d1's reported RL scale


def print_d1_gpu_hours(cfg, device, grpo_parts, sft_seconds, s):
    """d1's whole runs at the speed just measured, in GPU-hours, beside what d1's took.

    A d1 RL step (grpo.d1_grpo_preset) is one rollout round of 16 questions and mu updates; each
    question costs one GPU its rollout, and per update its old + reference log-probs and its share of
    the update: the seconds measured above for 1 question with mu = 1. So one step is
    16 x (rollout + mu x (log-probs + update)) GPU-seconds, on any number of GPUs. SFT: steps x
    batch rows of one measured row each. An estimate: it ignores communication and evaluation."""
    if cfg.d_model != 4096:
        print(f"\nGPU-hours of d1's runs: only estimated for --model=llada-8b (this is {args_name(cfg)}).")
        return
    rollout, logps, update = grpo_parts["rollout"], grpo_parts["log-probs"], grpo_parts["update"]
    print(f"\nd1's runs at this speed, on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}:")
    print("| run | steps | GPU-hours (estimate) |\n|---|---|---|")
    for task in D1_STEPS:
        preset = d1_grpo_preset({"task": task})
        step_seconds = preset["questions_per_step"] * (rollout + preset["mu"] * (logps + update))
        hours = preset["steps"] * step_seconds / 3600
        print(f"| diffu-GRPO {task} (mu {preset['mu']}) | {preset['steps']} | {hours:,.0f} |")
    print(f"| SFT on s1K | {s.steps} x {s.batch_size} rows | {s.steps * s.batch_size * sft_seconds / 3600:,.0f} |")
    print(f"d1's RL runs took {D1_GPU_HOURS}.")


def args_name(cfg):
    return "LLaDA-8B" if cfg.d_model == 4096 else f"{cfg.n_layers}-layer d={cfg.d_model}"
