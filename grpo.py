"""
Stage 3, diffu-GRPO (d1 paper, Sec. 3.2 and Algorithm 1): policy-gradient RL for a masked diffusion LM.

    python train.py --stage grpo                       # from checkpoints/tiny-sft.pt
    python train.py --stage grpo --init=checkpoints/tiny-base.pt --out_dir=out/grpo-from-base
    python train.py --stage grpo --remasking=low_confidence         # d1's rollouts (deviation 5)
    python train.py --stage grpo --cache=none                       # d1's sampler for the rollouts (deviation 7)
    python train.py --stage grpo --threshold=0.9                     # also parallel decoding (Fast-dLLM)
    python train.py --stage grpo --probe=64                          # no training: what the rollouts find
    torchrun --nproc_per_node=8 train.py --stage grpo ...            # 8 processes (GPUs), the same run

GRPO needs log pi(o_k | q, o_<k) per token. An autoregressive model gives that in one forward
pass; a diffusion model has no such factorisation. d1's answer, the one-step estimator: mask the
WHOLE completion, randomly mask ~15% of the prompt, run ONE forward pass, and read each
completion token's log-prob from its (masked) position (a mean-field estimate):

    prompt (p_mask_prompt = 0.15)       completion (all masked)
    P  P  M  P  P  P  M  P  P  |  M  M  M  M  M  M  M  M        one forward pass
                                  log p(o_1) ... log p(o_C)     read at every completion slot

The random prompt mask is a regulariser: each of the mu inner updates sees its own mask, so
the policy cannot overfit one view of the prompt, and reusing a rollout mu times stays stable.

train_grpo() at the bottom is Algorithm 1, top to bottom, with the paper's line numbers:
    3-4   a batch of questions; pi_old <- pi_theta                   grpo_questions()
    5     G completions per question with the diffusion sampler     eval.complete()
    6     rewards r_i, advantages A_i = r_i - mean(r)                 group_advantages()
    7     for j in 1..mu (inner updates, each with prompt mask j)    prompt_mask()
    8        log-probs of pi_theta, pi_old, pi_ref with mask j        estimators.py (--estimator)
    9        minimise the clipped surrogate + beta KL(pi_theta || pi_ref)   grpo_loss()

Deviations from d1's released code (github.com/dllm-reasoning/d1), on purpose:
  1. The prompt mask of inner update j is drawn from a local torch.Generator seeded with
     (seed, step, j). The official code derives it from a step counter so that each micro-batch
     sees only mu/2 distinct masks, and it reseeds the global RNGs.
  2. mu = 1 with beta > 0 works (it crashes in the official code).
  3. The loss is the pooled token mean over completion tokens up to and including the first EOS
     (as the official code runs it), not the per-sequence mean of the paper's equation.
  4. Tiny-scale values for the sizes (group size, lengths, steps, lr): see GRPOConfig below,
     where each key says whether it is d1's value or the tiny one.
  5. The tiny run's rollouts commit their sampled tokens in a random order (remasking="random"),
     not most-confident first as d1's do. Low-confidence remasking keeps only tokens the model is
     already sure of, so the tiny model's G completions often come out identical: a group with
     equal rewards has zero advantage and teaches nothing (README, "Honest notes", has the
     numbers). Evaluation still decodes greedily, most-confident first, as d1's does.
     --remasking=mixed samples half of each group each way (group_remasking; README, "Moving the
     table", item 19). The log-probs do not depend on the order a rollout was written in (every
     estimator masks the whole completion), so rows of either kind train alike.
  6. Every rollout row samples with its own noise generator, seeded by (seed, step, question, i),
     and every prompt of a step is left-padded to the step's longest: a row's answer is then the
     same whichever process samples it, in whatever batch (see "Several processes" below). d1's
     code samples each process's batch with one generator.

  7. The tiny run's rollouts read Fast-dLLM's approximate dual KV cache (cache="dual",
     diffusion.generate): 3x faster rollouts, with the same rise of the reward curve as d1's sampler
     (README, "Fast sampling"); with early stop (below) the default run fits 10 minutes on 2 cores
     (README, "Quick start"). --cache=none gives d1's sampler; --preset=d1 uses it.

Rollouts stop early where nothing the run reads can change (rollout_stop_ids; not a deviation, the
same rows): each block is sampled for the rows that have not yet committed an EOS with nothing
masked before it, and a rollout ends when every row has. With d1's estimator the loss reads a
completion up to its first EOS only (completion_mask) and the log-prob passes mask every completion
slot, so the tokens after it would enter nothing; the rewards read the text up to the end of turn,
which comes first. Countdown's and Arith's answers mostly end in the first block of three, so the
later blocks run Sudoku's rows and few others (README, "Fast sampling", has the times). The coupled
and ELBO estimators show the model a completion's later tokens too, so their rollouts run every step.

--threshold adds Fast-dLLM's parallel decoding (off by default): with random remasking a step commits
one random masked token of the block, plus every one whose sampled token has a probability above
the threshold. With either option the log line ends with the rollout's sampler steps.
--resample_rounds=N adds DAPO's dynamic sampling (Yu et al. 2025, off by default): a group whose G
rewards tie has zero advantage, so it is replaced by G completions of a stand-in question of the
same task, up to N times per step. The logged reward is then that of the rows trained on, and
first_reward (metrics.jsonl) that of the step's first rollout: the policy's own, without the choice.
--estimator=coupled or elbo replaces line 8's one-step estimator by later work's (estimators.py:
complementary masks, DiffuCoder; a K-sample ELBO with a sequence-level ratio, ESPO), at 2 or K
forward passes per log-prob instead of 1.

Several processes (torchrun, distributed.py): every process builds the whole step, the questions
(a pure function of seed and step), the prompt length and the prompt masks; it takes its own
contiguous share of the questions, whole groups of G (advantages need the whole group), and
samples, scores and computes log-probs for those rows only:

    questions of step s     q0 q1       | q2 q3             questions_per_step = 4, 2 processes
    rollout rows (G = 3)    rank 0: q0 q0 q0 q1 q1 q1 | rank 1: q2 q2 q2 q3 q3 q3
    row i of question q     noise seeded by (seed, s, q, i), prompt padded to the step's longest

The loss divides by the whole step's token count, DistributedDataParallel sums the gradients, and
the metrics pool every process's rows, so the numbers (and the weights) are those of one process
running the same step, to float rounding. Rank 0 alone prints and writes.
"""

import copy
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from tqdm import tqdm

from checkpoint import finish, load_any, load_tokenizer, model_config, restore, save_run
from common import (ConfigError, FinetuneConfig, MetricsLog, autocast, check_choice, check_range, init_model,
                    make_optimizer, mix_seed, row_slices, set_lr, start_run)
from diffusion import REMASKING, check_fast_sampler, check_sampler
from distributed import (all_gather_objects, all_sum, check_split, is_main, launched, my_rows, shard, sync_gradients,
                         world, wrap)
from estimators import ESTIMATORS, chunked_logps, completion_weights, estimate_logps, loss_logps, prompt_mask
from eval import complete
from lora import adapters_off
from plot import plot_rewards, print_summaries
from tasks_d1 import D1_TASK_NAMES, d1_task
from tasks_tiny import get_tiny_tasks


ROLLOUT_REMASKING = (*REMASKING, "mixed")  # mixed: half of each group random, half low-confidence (group_remasking)

# d1's runs, stopped by hand, in OPTIMIZER steps. Each rollout round is reused for mu of them, and a
# step here is one round with its mu updates, so d1's run is D1_STEPS / mu of our steps (GSM8K: 642).
D1_STEPS = {"gsm8k": 7700, "math": 6600, "countdown": 5000, "sudoku": 3800}


def d1_grpo_preset(given):
    """--preset=d1: d1's diffu-GRPO run for LLaDA-8B-Instruct on one task (d1 paper Sec. 3.2 and
    Sec. 4; d1's released run scripts, whose values the authors ran where the paper differs)."""
    task = given.get("task")
    if task not in D1_STEPS:
        raise ConfigError(f"--preset=d1 needs --task, one of {', '.join(D1_STEPS)} (d1's mu and steps depend on it)")
    mu = 12 if task in ("gsm8k", "math") else 8  # d1: 12 for GSM8K and MATH, 8 for Countdown and Sudoku
    return {
        "lora_r": 128, "lora_alpha": 64.0, "lora_dropout": 0.05,  # d1's run scripts
        "lora_targets": "q_proj,k_proj,v_proj,up_proj",  # d1 (the other names its code lists are not in LLaDA)
        "lr": 3e-6,  # d1's scripts (the paper's text says 5e-6)
        "betas": (0.9, 0.99), "weight_decay": 0.1, "grad_clip": 0.2,  # d1
        "warmup_steps": 5, "min_lr_ratio": 1.0,  # d1: constant schedule after a tiny warmup
        "steps": round(D1_STEPS[task] / mu), "mu": mu,  # d1's optimizer steps, as rollout rounds of mu updates
        "questions_per_step": 16,  # d1: 8 GPUs x 1 question x 2 accumulation steps
        "group_size": 6, "gen_length": 256, "block_length": 32, "diffusion_steps": 128,  # d1's rollouts
        "temperature": 0.9, "remasking": "low_confidence", "cache": None,  # d1's rollouts (no cache)
        "max_prompt_length": 200,  # d1 cuts longer prompts from the left
        "p_mask_prompt": 0.15, "epsilon": 0.5, "beta": 0.04,  # d1's run scripts
        "rollout_batch": 6, "logp_chunk": 6,  # one question's group per forward, as d1's one per GPU
        "checkpointing": True,  # memory for one GPU (memory.py)
        "sample_every": round(100 / mu), "ckpt_every": round(100 / mu),  # d1 evaluates every 100 optimizer steps
    }


@dataclass
class GRPOConfig(FinetuneConfig):
    """diffu-GRPO. Each key says whether it is d1's value or the tiny one."""

    init: str = "checkpoints/tiny-sft.pt"  # d1 runs RL on the merged SFT model (or on the base)
    out_dir: str = "out/grpo"  # ckpt.pt, metrics.jsonl and reward_curve.png go here
    steps: int = 50  # rollout rounds of mu updates each; tiny (d1: 475-642 rounds on 8 A100s)
    questions_per_step: int = 9  # tiny: 3 per task, so every step mixes the tasks alike (d1: 16, one task)
    group_size: int = 6  # G, d1
    gen_length: int = 96  # tiny: every SFT trace fits (Sudoku's longest: 77 tokens, 95 backtracking; d1: 256)
    block_length: int = 32  # d1
    diffusion_steps: int = 48  # gen_length / 2: two tokens per step, as d1 (256 length, 128 steps)
    temperature: float = 0.9  # d1
    remasking: str = "random"  # tiny (d1: low_confidence), or mixed (half of each group): deviation 5
    cache: str | None = "dual"  # rollouts' KV cache: tiny (d1: none); prefix or dual (Fast-dLLM): deviation 7
    threshold: float | None = None  # rollouts' parallel decoding threshold in (0, 1], e.g. 0.9; none = off (d1)
    mu: int = 4  # inner updates per rollout; tiny (d1: 12 GSM8K/MATH, 8 Countdown/Sudoku)
    p_mask_prompt: float = 0.15  # d1's runs (its dataclass default 0.3 was not used)
    estimator: str = "d1"  # line 8's log-probs: d1 (one step), coupled or elbo (later work; estimators.py)
    elbo_samples: int = 2  # K, forward passes per log-prob of --estimator=elbo (tiny choice)
    resample_rounds: int = 0  # dynamic sampling (DAPO): up to N more rollouts replace tied groups; 0 = off (d1)
    probe: int = 0  # N > 0: no training; what these rollouts find on N training questions per task (probe_rollouts)
    epsilon: float = 0.5  # clip range, d1's run scripts (dataclass default 0.2)
    beta: float = 0.04  # KL weight, d1
    scale_rewards_by_std: bool = False  # d1 runs without std division (Dr. GRPO style)
    lr: float = 2e-5  # tiny, full fine-tuning (d1: 3e-6 with LoRA)
    grad_clip: float = 0.2  # d1
    warmup_steps: int = 5  # d1: constant schedule with a short warmup
    min_lr_ratio: float = 1.0  # constant after warmup, as d1
    logp_chunk: int = 16  # rows per log-prob forward pass (bounds the (rows, T, V) logits in memory)
    rollout_batch: int = 0  # rows per sampler call; 0 = all questions_per_step x group_size at once
    max_prompt_length: int = 0  # cut longer prompts from the left (d1: 200); 0 = never
    task: str = ""  # with --data: d1's task, gsm8k, math, countdown or sudoku (its RL prompt and rewards)
    log_every: int = 1  # print and log a metrics line every N steps
    sample_every: int = 10  # print the best and worst completion of a question every N steps
    ckpt_every: int = 20  # write out_dir/ckpt.pt every N steps (and at the end)

    PRESETS: ClassVar[dict] = {"d1": d1_grpo_preset}

    def __post_init__(self):
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"--group_size={self.group_size}: GRPO needs at least 2 completions per question "
                             "(advantages are rewards minus the group mean; a group of 1 has no signal)")
        check_choice("remasking", self.remasking, ROLLOUT_REMASKING)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_sampler(self.gen_length, self.block_length, self.diffusion_steps,
                      keys=("gen_length", "block_length", "diffusion_steps"))
        check_fast_sampler(self.cache, self.threshold)
        if self.fsdp and self.threshold is not None:  # distributed.shard: every forward is a collective
            raise ConfigError(f"--threshold={self.threshold} with --fsdp=true: parallel decoding ends each process's "
                              "rollout after its own number of forward passes, and sharded weights need every "
                              "process in each; drop --threshold or --fsdp")
        if self.fsdp and self.resample_rounds:  # the same reason: each process resamples its own groups
            raise ConfigError(f"--resample_rounds={self.resample_rounds} with --fsdp=true: each process resamples "
                              "its own tied groups, a different number of rollouts on each, and sharded weights "
                              "need every process in each forward; drop --resample_rounds or --fsdp")
        check_range(self, 1, None, "questions_per_step", "mu", "logp_chunk", "elbo_samples")
        check_range(self, 0, None, "rollout_batch", "max_prompt_length", "resample_rounds", "probe")
        if self.probe and launched():
            raise ConfigError(f"--probe={self.probe} runs in one process: start it with python, not torchrun")
        check_split(self.questions_per_step, "questions per step (--questions_per_step)")  # over torchrun's processes
        if self.task:
            check_choice("task", self.task, D1_TASK_NAMES)
        check_range(self, 0, None, "temperature", "beta")
        check_range(self, 0, 1, "p_mask_prompt")
        check_range(self, 0, None, "epsilon", low_open=True)


def training_pools(cfg):
    """[(task, its training examples)]: d1's task read from --data, or the tiny tasks."""
    if bool(cfg.task) != bool(cfg.data):
        raise ConfigError("--task and --data go together: d1's task and its training rows (a local file; "
                          "README, 'd1 at full scale'); without both, the tiny tasks")
    if cfg.data:
        task = d1_task(cfg.task)
        return [(task, task.load(cfg.data))]
    return [(task, task.examples("train")) for task in get_tiny_tasks(cfg.tasks)]


def longest_prompt(cfg, tok, pools):
    """The longest RL prompt of the training data in tokens, after the --max_prompt_length cut."""
    return prompt_length(cfg, tok, ((task, ex) for task, examples in pools
                                    for ex in tqdm(examples, desc="prompt lengths", leave=False, disable=None)))


def prompt_length(cfg, tok, questions):
    """The longest RL prompt of (task, example) pairs in tokens, after the --max_prompt_length cut."""
    longest = max(len(tok.chat(task.rl_prompt(ex))) for task, ex in questions)
    return min(longest, cfg.max_prompt_length) if cfg.max_prompt_length else longest


def check_fits(cfg, longest, context):
    """Refuse, before the first rollout, a gen_length that the longest question leaves no room for."""
    if longest + cfg.gen_length > context:
        raise ConfigError(f"--gen_length={cfg.gen_length}: the longest prompt ({longest} tokens) plus the answer "
                          f"exceed the model's context of {context} tokens; at most {context - longest}")


# -----------------------------------------------------------------------------
# The pieces of Algorithm 1


def grpo_questions(step, cfg, pools, resample_round=0):
    """Lines 3-4: the questions of a step, a pure function of (seed, step); the tasks take turns.

    pools: [(task, its training examples)]. Returns [(task, example)]. resample_round r > 0 gives
    dynamic sampling's stand-ins: question q of round r is drawn from q's task, seeded by
    (seed, step, q, r), so it is the same whichever process asks for it."""
    rng = random.Random(mix_seed(cfg.seed, step))
    picks = []
    for q in range(cfg.questions_per_step):
        task, examples = pools[(step * cfg.questions_per_step + q) % len(pools)]
        if resample_round:
            rng = random.Random(mix_seed(cfg.seed, step, q, resample_round))
        picks.append((task, rng.choice(examples)))
    return picks


def rollout_generators(seed, step, questions, G, device, resample_round=0):
    """Line 5's noise: one generator per rollout row, row i of question q seeded by (seed, step, q, i),
    q the question's number in the step. Rows of questions [2, 3] with G = 3:
        (seed, step, 2, 0) (seed, step, 2, 1) (seed, step, 2, 2) (seed, step, 3, 0) ...
    A row's samples then depend on nothing else: not on the process that draws them, nor on the
    other rows of its sampler call. Dynamic sampling's round r > 0 seeds (seed, step, q, i, r).
    (mod 2^64: torch seeds are 64-bit; mix_seed's can be longer.)"""
    extra = (resample_round,) if resample_round else ()
    return [torch.Generator(device=device).manual_seed(mix_seed(seed, step, q, i, *extra) % 2**64)
            for q in questions for i in range(G)]


def rollout(model, tok, questions, numbers, step, P, cfg, device, resample_round=0):
    """Line 5: G completions of each (task, example) of `questions`, whose numbers in the step are
    `numbers`, sampled as cfg says, every prompt left-padded to P tokens. Returns eval.Completions."""
    G = cfg.group_size
    return complete(model, tok, [q for q in questions for _ in range(G)], gen_length=cfg.gen_length,
                    block_length=cfg.block_length, steps=cfg.diffusion_steps, temperature=cfg.temperature,
                    remasking=group_remasking(cfg.remasking, len(questions), G), prompt="rl", cache=cfg.cache,
                    threshold=cfg.threshold,
                    generator=rollout_generators(cfg.seed, step, numbers, G, device, resample_round),
                    max_prompt_length=cfg.max_prompt_length or None, pad_to=P,
                    batch_size=cfg.rollout_batch or None, stop_ids=rollout_stop_ids(cfg.estimator, tok))


def rollout_stop_ids(estimator, tok):
    """The rollouts' early stop (docstring above): at the first EOS for d1's estimator, which reads
    nothing after it; never for the coupled and ELBO estimators, whose passes show later tokens."""
    return (tok.eos_id,) if estimator == "d1" else None


def group_remasking(remasking, n_questions, G):
    """The rollout rows' remasking: --remasking for every row, or with "mixed" one rule per row, in
    every group rows 0, 2, 4, ... random and rows 1, 3, 5, ... low-confidence (a row's rule depends
    only on its place in its group, so on no process count or batch)."""
    if remasking != "mixed":
        return remasking
    return [("random", "low_confidence")[i % 2] for _ in range(n_questions) for i in range(G)]


def sample_step(model, tok, step, cfg, pools, mine, device):
    """Lines 3-5 for this process's questions (`mine`, a slice of the step's): their rollout
    (eval.Completions, N = my questions x G rows), the prompt length P every row is padded to, and
    for dynamic sampling the number of groups replaced and the first rollout's summed reward.

    Dynamic sampling (--resample_rounds): round r replaces each group whose rewards tie with G
    completions of its stand-in question of round r; every round's prompts are padded to one P."""
    G = cfg.group_size
    rounds = [grpo_questions(step, cfg, pools, r) for r in range(cfg.resample_rounds + 1)]
    P = prompt_length(cfg, tok, [q for questions in rounds for q in questions])
    ro = rollout(model, tok, rounds[0][mine], range(mine.start, mine.stop), step, P, cfg, device)
    first_reward, resampled = ro.reward.sum().item(), 0  # the policy's own reward, before any choice
    for r in range(1, len(rounds)):
        tied = tied_groups(ro.reward, G)  # numbers among my questions
        if not tied:
            break
        numbers = [mine.start + g for g in tied]
        fresh = rollout(model, tok, [rounds[r][q] for q in numbers], numbers, step, P, cfg, device, r)
        ro, resampled = replace_groups(ro, tied, fresh, G), resampled + len(tied)
    return ro, P, resampled, first_reward


def tied_groups(rewards, G):
    """The numbers of the groups whose G rewards are all equal: zero advantage, nothing to learn."""
    return (rewards.view(-1, G).std(dim=1) < 1e-6).nonzero().flatten().tolist()


def replace_groups(ro, groups, fresh, G):
    """Dynamic sampling: the rollout `ro` with the rows of `groups` (group numbers, G rows each)
    replaced, in order, by the rows of `fresh` (eval.Completions of len(groups) x G rows)."""
    rows = [g * G + i for g in groups for i in range(G)]

    def put(old, new):  # old with rows `rows` set to new's
        out = old.clone()
        out[torch.tensor(rows, device=old.device)] = new.to(old.device)
        return out

    texts = list(ro.texts)
    for k, row in enumerate(rows):
        texts[row] = fresh.texts[k]
    names = list(dict.fromkeys([*ro.rewards, *fresh.rewards]))  # tasks may name different rewards
    zeros = torch.zeros(len(rows))
    rewards = {n: put(ro.rewards.get(n, torch.zeros(len(ro.texts))), fresh.rewards.get(n, zeros)) for n in names}
    return replace(ro, prompt_ids=put(ro.prompt_ids, fresh.prompt_ids),
                   prompt_attention=put(ro.prompt_attention, fresh.prompt_attention),
                   completion_ids=put(ro.completion_ids, fresh.completion_ids), texts=texts, rewards=rewards,
                   reward=put(ro.reward, fresh.reward), correct=put(ro.correct, fresh.correct),
                   well_formed=put(ro.well_formed, fresh.well_formed), steps=ro.steps + fresh.steps)


def group_advantages(rewards, group_size, scale_by_std=False):
    """Line 6: A_i = r_i - mean(r over the group) (no std division, as d1 runs it).

    Rows are grouped G by G (the G completions of one question are consecutive):
        rewards  [ 1    0    0    1    0    0  |  0    0    0    0    0    1  ]   G = 6, two questions
        A        [2/3 -1/3 -1/3  2/3 -1/3 -1/3 | -1/6 -1/6 -1/6 -1/6 -1/6 5/6 ]
    A group whose rewards are all equal gets zero advantage: only the KL term moves it."""
    r = rewards.view(-1, group_size)  # (B, G)
    a = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        a = a / (r.std(dim=1, keepdim=True) + 1e-4)
    return a.view(-1)  # (N,)


def completion_mask(completion_ids, eos_id):
    """(N, C) 1.0 for each token up to and including the first EOS, 0 after it: the tokens in the loss.

    A completion that never writes EOS counts every token."""
    is_eos = completion_ids == eos_id  # (N, C)
    after_first_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_first_eos).float()


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps, beta, n_tokens):
    """Line 9, per token, summed over `mask` and divided by n_tokens (the pooled mean, deviation 3).

      rho       = exp(logp - old_logp)
      surrogate = -min(rho A, clip(rho, 1 - eps, 1 + eps) A)      PPO's clipped objective
      kl        = exp(ref - logp) - (ref - logp) - 1               k3 estimator, >= 0, 0 iff equal
    At the first inner update logp == old_logp, so rho = 1 and the surrogate's value is just -A
    (its mean over a group is 0), yet its gradient is the REINFORCE gradient A * grad logp.
    logp etc. (n, C); advantages (n,); mask (n, C). Returns (loss, stats dict of sums)."""
    ratio = torch.exp(logp - old_logp)  # (n, C)
    A = advantages[:, None]  # (n, 1)
    unclipped, clipped = ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A  # (n, C)
    surrogate = -torch.min(unclipped, clipped)  # (n, C)
    delta = ref_logp - logp  # (n, C)
    kl = torch.exp(delta) - delta - 1  # (n, C)
    loss = ((surrogate + beta * kl) * mask).sum() / n_tokens
    was_clipped = (clipped < unclipped).float()  # the clip changed this token's objective
    stats = {"kl": (kl.detach() * mask).sum().item(), "clipped": (was_clipped * mask).sum().item()}
    return loss, stats


def policy_update(model, optimizer, ro, is_prompt_masked, old, ref, advantages, loss_mask, cfg, device,
                  n_tokens=None, wrapped=None, weights=None):
    """Line 9, one gradient step: the clipped loss over every row of the rollout, cfg.logp_chunk rows
    per forward/backward (their gradients add up), then clipping and the optimizer step.
    old, ref: (N, C) log-probs under this update's masks: its prompt mask and, for cfg.estimator
    coupled or elbo, its completion masks `weights` (estimators.completion_weights; None for d1).
    The ELBO estimates enter the loss per sequence (estimators.loss_logps). Returns sums of loss, kl, clipped.

    On several processes: n_tokens is the whole step's count of loss tokens (all processes; default:
    this rollout's), and wrapped the model in DistributedDataParallel (distributed.ddp), whose
    backward averages the gradients over the W processes; each loss is multiplied by W so that the
    average is the sum, the gradient of the whole step's loss. The all-reduce runs once, with the
    last chunk's backward (distributed.sync_gradients). Under --fsdp wrapped is the sharded model
    itself, whose backward averages likewise (a reduce-scatter after every chunk)."""
    sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0}
    n_tokens = loss_mask.sum().clamp(min=1) if n_tokens is None else n_tokens
    wrapped = model if wrapped is None else wrapped
    chunks = row_slices(ro.completion_ids.size(0), cfg.logp_chunk)
    for c, rows in enumerate(chunks):
        with sync_gradients(wrapped, now=c == len(chunks) - 1):
            with autocast(device, cfg.dtype):
                logp = estimate_logps(wrapped, ro, is_prompt_masked, model.config.mask_token_id, rows,
                                      weights)  # (n, C)
            logp, old_j, ref_j = loss_logps(cfg.estimator, loss_mask[rows], logp, old[rows], ref[rows])  # (n, C) each
            loss, stats = grpo_loss(logp, old_j, ref_j, advantages[rows], loss_mask[rows], cfg.epsilon, cfg.beta,
                                    n_tokens)
            (loss * world()).backward()  # DDP averages the W processes' gradients: W x the average = the sum
        sums["loss"] += loss.item()
        sums["kl"] += stats["kl"]
        sums["clipped"] += stats["clipped"]
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums


# -----------------------------------------------------------------------------
# Algorithm 1


def train_grpo(cfg: GRPOConfig):
    if cfg.probe:
        return probe_rollouts(cfg)
    device = start_run(cfg, "grpo")  # under torchrun: joins the process group (distributed.setup)
    tok = load_tokenizer(cfg.init)  # the tiny tokenizer, or a LLaDA folder's tokenizer.json
    pools = training_pools(cfg)
    longest = longest_prompt(cfg, tok, pools)
    check_fits(cfg, longest, model_config(cfg.init).max_sequence_length)
    model = init_model(cfg, device, tok, "grpo", prompt_length=longest)
    # pi_ref, the KL anchor: the starting model. With LoRA that is the same model with its adapters
    # off; otherwise a frozen copy, which --fsdp shards as well (it is as big as the model).
    # (adapters_off does nothing to a model without adapters.)
    reference = model if cfg.lora_r > 0 else copy.deepcopy(model).requires_grad_(False).eval()
    reference = shard(reference) if cfg.fsdp else reference
    # The update's forward: DDP's wrapper, or (--fsdp) the sharded model itself; rollouts and no-grad
    # log-probs run the model itself. Before the optimizer, which must hold the shards.
    wrapped = wrap(model, cfg.fsdp)
    optimizer = make_optimizer(model, cfg)
    rng = torch.Generator(device=device)  # checkpoints keep a sampler generator's state; GRPO's rows seed their own
    start = restore(cfg, "grpo", model, optimizer, rng) if cfg.resume else 0
    metrics = MetricsLog(cfg.out_dir, cfg.resume)
    mask_id, G, mu, chunk = model.config.mask_token_id, cfg.group_size, cfg.mu, cfg.logp_chunk
    mine = my_rows(cfg.questions_per_step, "questions per step (--questions_per_step)")  # this process's
    my_rollouts = slice(mine.start * G, mine.stop * G)  # ... and their rows: whole groups

    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="grpo", dynamic_ncols=True,
               disable=not is_main())
    for step in bar:
        lr = set_lr(optimizer, step, cfg)
        seconds = {}

        # Lines 3-5: a batch of questions, and G completions of each from the current policy. Every
        # process knows the whole step's questions; it samples its own, padded to the step's longest
        # (with --resample_rounds, tied groups are replaced by fresh questions' groups: sample_step).
        tick = time.time()
        model.eval()
        with autocast(device, cfg.dtype):
            ro, P, resampled, first_reward = sample_step(model, tok, step, cfg, pools, mine, device)  # N rows

        # Line 6: rewards and group-relative advantages; the tokens that enter the loss.
        advantages = group_advantages(ro.reward, G, cfg.scale_rewards_by_std).to(device)  # (N,)
        loss_mask = completion_mask(ro.completion_ids, tok.eos_id)  # (N, C)
        n_tokens = all_sum(loss_mask.sum()).clamp(min=1)  # the loss's divisor: the whole step's tokens
        seconds["rollout"] = time.time() - tick

        # Line 8, for every j at once: the old and reference log-probs don't change during the mu
        # updates, so they are computed once, under each of the mu prompt masks (and, for the coupled
        # and ELBO estimators, the mu draws of completion masks; d1 draws none: weights None).
        tick = time.time()
        whole = (cfg.questions_per_step * G, P)  # every process draws the step's whole mask, takes its rows
        masks = [prompt_mask(cfg.seed, step, j, whole, cfg.p_mask_prompt, device)[my_rollouts] for j in range(mu)]
        weights = [completion_weights(cfg.estimator, cfg.seed, step, j, (whole[0], cfg.gen_length), cfg.elbo_samples,
                                      device, my_rollouts) for j in range(mu)]  # mu x (S, N, C), or None
        with autocast(device, cfg.dtype):
            old = [chunked_logps(model, ro, m, mask_id, chunk, w) for m, w in zip(masks, weights)]  # mu x (N, C)
            with adapters_off(reference):
                ref = [chunked_logps(reference, ro, m, mask_id, chunk, w) for m, w in zip(masks, weights)]
        seconds["logps"] = time.time() - tick

        # Lines 7-9: mu gradient steps on the same rollout, step j with prompt mask j.
        tick = time.time()
        model.train()
        sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0}
        for j in range(mu):
            step_sums = policy_update(model, optimizer, ro, masks[j], old[j], ref[j], advantages, loss_mask, cfg,
                                      device, n_tokens, wrapped, weights[j])
            sums = {k: sums[k] + step_sums[k] for k in sums}
        seconds["update"] = time.time() - tick

        # Log (every process's rows pooled), show the best and worst completion now and then, checkpoint.
        done = step + 1
        counts = {**sums, "resampled": resampled, "first_reward": first_reward} if cfg.resample_rounds else sums
        row = grpo_metrics(pool_processes(ro, loss_mask, counts), G, mu, seconds)
        metrics.write(stage="grpo", step=done, lr=lr, seconds=round(time.time() - t0, 2), **row)  # rank 0 writes
        bar.set_postfix(reward=f"{row['reward']:.3f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            tqdm.write(grpo_log_line(done, row, fast=bool(cfg.cache or cfg.threshold)))  # rank 0 prints
        if cfg.sample_every and done % cfg.sample_every == 0 and is_main():
            print_best_and_worst(ro, G)  # the step's first question, rank 0's
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_run(cfg, "grpo", model, optimizer, done, rng)  # rank 0 writes, the others wait
    if is_main():
        plot_rewards(Path(cfg.out_dir) / "metrics.jsonl")
        print_summaries([Path(cfg.out_dir) / "metrics.jsonl"])  # minutes, reward first -> last 20%, slope (README)
    finish(cfg, "grpo", model, optimizer, rng, time.time() - t0, tok)
    return model


# -----------------------------------------------------------------------------
# --probe: what the rollouts find before any training


def probe_rollouts(cfg):
    """--probe=N: sample G completions of each of the first N training questions of every task, with
    this run's rollout settings (line 5 at step 0: --init's model, temperature, remasking, cache,
    threshold, lengths), and print one line per task. Nothing is trained or written.

    RL sharpens what its sampler finds: a group's advantages are its rewards minus their mean, so
    a task teaches something only where answers are sometimes right (right: pass@1 for a right/wrong
    task) and a group often holds one (best of G: pass@G), and a tied group teaches nothing.
    Returns {task name: probe_summary's dict}."""
    device = start_run(cfg, "grpo --probe")
    tok = load_tokenizer(cfg.init)
    model = load_any(cfg.init, device, tok=tok)[0].eval()
    rows = cfg.rollout_batch or cfg.questions_per_step * cfg.group_size  # per sampler call, as a training step
    sampling = replace(cfg, rollout_batch=rows)
    found = {}
    for task, examples in training_pools(cfg):
        questions = [(task, ex) for ex in examples[:cfg.probe]]
        with autocast(device, cfg.dtype):
            ro = rollout(model, tok, questions, range(len(questions)), 0, prompt_length(cfg, tok, questions),
                         sampling, device)
        found[task.name] = probe_summary(ro, cfg.group_size)
        print(probe_line(task.name, found[task.name], cfg.group_size), flush=True)
    return found


def probe_summary(ro, G):
    """A rollout of groups of G -> right (mean of task.correct), best_of_g (the mean over groups of
    their best answer's score: pass@G where scores are 0 or 1), tied (share of groups whose rewards
    tie), reward (mean), well_formed (share) and n (rows)."""
    right = ro.correct.view(-1, G)  # (questions, G)
    return {"right": right.mean().item(), "best_of_g": right.max(dim=1).values.mean().item(),
            "tied": len(tied_groups(ro.reward, G)) / right.size(0), "reward": ro.reward.mean().item(),
            "well_formed": ro.well_formed.float().mean().item(), "n": ro.reward.numel()}


def probe_line(name, found, G):
    """The printed line of one task's probe_summary (README, "Moving the table", item 19)."""
    return (f"probe {name}: right {100 * found['right']:.1f}% | best of {G} {100 * found['best_of_g']:.1f}% | "
            f"tied groups {100 * found['tied']:.0f}% | reward {found['reward']:.3f} | "
            f"well formed {100 * found['well_formed']:.0f}% | {found['n'] // G} questions x {G}")


def pool_processes(ro, loss_mask, sums):
    """What the metrics need from every process, pooled in question order: the whole step's rows
    as one process would hold them. (One process: this rollout's, as they are.)"""
    parts = all_gather_objects({"reward": ro.reward, "correct": ro.correct, "rewards": ro.rewards,
                                "length": loss_mask.sum(1).cpu(), "steps": ro.steps, **sums})
    names = list(dict.fromkeys(name for part in parts for name in part["rewards"]))  # tasks name their own
    return {"reward": torch.cat([part["reward"] for part in parts]),  # (N,) all rows
            "correct": torch.cat([part["correct"] for part in parts]),  # (N,)
            "length": torch.cat([part["length"] for part in parts]),  # (N,) tokens in the loss per row
            "rewards": {name: torch.cat([part["rewards"].get(name, torch.zeros(len(part["reward"])))
                                         for part in parts]) for name in names},  # name -> (N,)
            "steps": max(part["steps"] for part in parts),  # the sampler's passes on the busiest process
            **{k: sum(part[k] for part in parts) for k in sums}}


def grpo_metrics(pooled, G, mu, seconds):
    """The health metrics of one GRPO step (d1 logs the same ones), from pool_processes()."""
    n_tokens = pooled["length"].sum().clamp(min=1).item()
    tied_share = len(tied_groups(pooled["reward"], G)) / (pooled["reward"].numel() // G)  # of the groups
    row = {"reward": pooled["reward"].mean().item(), "reward_std": pooled["reward"].std().item(),
           "accuracy": pooled["correct"].mean().item(), "zero_std_share": tied_share,
           "kl": pooled["kl"] / (n_tokens * mu), "clip_ratio": pooled["clipped"] / (n_tokens * mu),
           "loss": pooled["loss"] / mu, "completion_length": pooled["length"].float().mean().item(),
           "rollout_steps": pooled["steps"],
           **({"resampled": pooled["resampled"],  # groups replaced, and the first rollout's mean reward
               "first_reward": pooled["first_reward"] / pooled["reward"].numel()} if "resampled" in pooled else {}),
           **{f"seconds_{k}": round(v, 2) for k, v in seconds.items()}}
    for name, values in pooled["rewards"].items():
        row[f"reward/{name}"] = values.mean().item()
        row[f"reward/{name}_std"] = values.std().item()
    return row


def grpo_log_line(step, row, fast=False):
    """The fixed-format line of one GRPO step; seconds are rollout + log-probs + update. With the
    fast sampler (fast=True) it ends with the rollout's sampler steps (d1's: diffusion_steps); with
    dynamic sampling, then with the number of tied groups replaced."""
    return (f"grpo step {step:4d} | reward {row['reward']:.3f} +- {row['reward_std']:.3f} | "
            f"acc {row['accuracy']:.3f} | zero-std {row['zero_std_share']:.2f} | kl {row['kl']:.4f} | "
            f"clip {row['clip_ratio']:.3f} | len {row['completion_length']:.1f} | "
            f"s {row['seconds_rollout']:.1f}+{row['seconds_logps']:.1f}+{row['seconds_update']:.1f}"
            + (f" | steps {row['rollout_steps']}" if fast else "")
            + (f" | resampled {row['resampled']}" if "resampled" in row else ""))


def print_best_and_worst(ro, G):
    """The best and worst completion of the first question of the rollout."""
    r = ro.reward[:G]
    best, worst = r.argmax().item(), r.argmin().item()
    tqdm.write(f"  best  ({r[best]:.2f}): {ro.texts[best]!r}\n  worst ({r[worst]:.2f}): {ro.texts[worst]!r}")
