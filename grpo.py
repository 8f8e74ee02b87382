"""
diffu-GRPO (d1, Zhao et al. 2025, Algorithm 1): policy-gradient RL for a masked diffusion LM.

    python train.py --stage grpo                       # from checkpoints/tiny-sft.pt, <= 10 min on CPU
    python train.py --stage grpo --init=checkpoints/tiny-base.pt --out_dir=out/grpo-from-base

GRPO needs log pi(o_k | q, o_<k) per token. An autoregressive model gives that in one forward
pass; a diffusion model has no such factorisation. d1's answer, the one-step estimator: mask the
WHOLE completion, randomly mask ~15% of the prompt, run ONE forward pass, and read each
completion token's log-prob from its (masked) position (a mean-field estimate):

    prompt (p_mask_prompt = 0.15)       completion (all masked)
    P  P  M  P  P  P  M  P  P  |  M  M  M  M  M  M  M  M        one forward pass
                                  log p(o_1) ... log p(o_C)     read at every completion slot

The random prompt mask is a regulariser: each of the mu inner updates sees its own mask, so
the policy cannot overfit one view of the prompt, and reusing a rollout mu times stays stable.

Algorithm 1 as this file implements it (line numbers are the paper's):
    3-4   sample a batch of questions; pi_old <- pi_theta                      (train.py loop)
    5     G completions per question with the diffusion sampler               rollout()
    6     rewards r_i, advantages A_i = r_i - mean(r)                          group_advantages()
    7     for j in 1..mu:  (inner updates, each with prompt mask j)           train.py loop
    8        log-probs of pi_theta, pi_old, pi_ref with the same mask j        sequence_logps()
    9        maximise clipped surrogate - beta KL(pi_theta || pi_ref)          grpo_loss()

Deviations from d1's official code (d1.md "diffu-GRPO, as the code runs it"), on purpose:
  1. The prompt mask of inner update j is drawn from a local torch.Generator seeded with
     (seed of the rollout, j). The official code derives it from a step counter so that each
     micro-batch sees only mu/2 distinct masks, and it reseeds the global RNGs.
  2. mu = 1 with beta > 0 works (it crashes in the official code).
  3. The loss is the pooled token mean over completion tokens up to and including the first EOS
     (as the official code runs it), not the per-sequence mean of the paper's equation.
  4. Tiny-scale values for the sizes (group size, lengths, steps, lr): see GRPOConfig in
     train.py, where each key says whether it is d1's value or the tiny one.
  5. The tiny run's rollouts commit their sampled tokens in a random order (remasking="random"),
     not most-confident first as d1's do. Low-confidence remasking keeps only tokens the model is
     already sure of, so the tiny model's G completions came out identical in 63% of groups (zero
     advantage, no signal) at temperature 0.9, and still 52% at 1.5; in random order every group
     has a spread. Evaluation still decodes greedily, most-confident first, as d1's does.
     --remasking=low_confidence gives d1's rollouts.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion import generate


@dataclass
class Rollout:
    """One generation round: N = (questions x G) completions, grouped G by G (same question)."""

    prompt_ids: torch.Tensor  # (N, P) left-padded with EOS
    prompt_attention: torch.Tensor  # (N, P) 1 = real prompt token, 0 = left padding
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C) 1 for tokens up to and including the first EOS
    texts: list  # N decoded completions (cut at the end of the answer)
    rewards: torch.Tensor  # (N,) total reward
    reward_parts: dict  # reward function name -> (N,) values
    accuracy: torch.Tensor  # (N,) the task's evaluation check (1/0, Sudoku: share of cells right)
    advantages: torch.Tensor  # (N,)


def left_pad(sequences, pad_id):
    """Lists of ids -> (N, P) tensor left-padded with pad_id, and the (N, P) attention mask.

    Left padding puts every prompt's last token right before the completion, as the sampler
    needs. Positions stay 0..T-1 along the row (llada.md section 3)."""
    P = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (P - len(s)) + s for s in sequences])
    attention = torch.tensor([[0] * (P - len(s)) + [1] * len(s) for s in sequences])
    return ids, attention


def completion_mask(completion_ids, eos_id):
    """(N, C) 1.0 for each token up to and including the first EOS, 0 after it.

    A completion that never writes EOS counts every token."""
    is_eos = completion_ids == eos_id  # (N, C)
    after_first_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_first_eos).float()


def group_advantages(rewards, group_size, scale_by_std=False):
    """A_i = r_i - mean(r over the group) (Algorithm 1, line 6; no std division, as d1 runs it).

        rewards  [ 1    0    0    1    0    0  |  0    0    0    0    0    1  ]   G = 6, two questions
        A        [2/3 -1/3 -1/3  2/3 -1/3 -1/3 | -1/6 -1/6 -1/6 -1/6 -1/6 5/6 ]
    A group whose rewards are all equal gets zero advantage: only the KL term moves it."""
    r = rewards.view(-1, group_size)  # (B, G)
    a = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        a = a / (r.std(dim=1, keepdim=True) + 1e-4)
    return a.view(-1)  # (N,)


@torch.no_grad()
def rollout(model, tok, questions, group_size, gen_length, block_length, steps, temperature, generator,
            remasking="low_confidence"):
    """Algorithm 1, line 5: G completions for each question, scored by its task.

    questions: list of (task, example). Completions of question q occupy rows q*G .. q*G+G-1:
        row:  0  1  2  3  4  5 | 6  7  8  9 10 11 | ...
        q:    0  0  0  0  0  0 | 1  1  1  1  1  1 | ..."""
    prompts = [tok.chat(ex.prompt) for task, ex in questions for _ in range(group_size)]
    prompt_ids, attention = left_pad(prompts, tok.eos_id)  # (N, P)
    device = next(model.parameters()).device
    prompt_ids, attention = prompt_ids.to(device), attention.to(device)
    out = generate(model, prompt_ids, steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=temperature, remasking=remasking, attention_mask=attention,
                   generator=generator)  # (N, P + C)
    completion_ids = out[:, prompt_ids.size(1):]  # (N, C)
    texts = [answer_text(tok, row) for row in completion_ids.tolist()]
    scored = [(task.reward(text, ex), task.correct(text, ex))
              for (task, ex), text in zip((q for q in questions for _ in range(group_size)), texts)]
    names = list(dict.fromkeys(name for r, _ in scored for name in r))  # tasks may differ (mixed runs)
    parts = {name: torch.tensor([r.get(name, 0.0) for r, _ in scored], dtype=torch.float32) for name in names}
    rewards = torch.stack(list(parts.values())).sum(0)  # (N,)
    return Rollout(prompt_ids, attention, completion_ids, completion_mask(completion_ids, tok.eos_id),
                   texts, rewards, parts, torch.tensor([c for _, c in scored], dtype=torch.float32),
                   group_advantages(rewards, group_size))


def answer_text(tok, ids):
    """Decode a completion up to its end-of-turn (<|eot_id|>) or first EOS."""
    for stop in (tok.eot_id, tok.eos_id):
        if stop in ids:
            ids = ids[: ids.index(stop)]
    return tok.decode(ids)


def prompt_mask(inner_step, rollout_seed, shape, p_mask_prompt, device):
    """The random prompt mask of inner update j: a pure function of (rollout seed, j).

    The old-policy, reference and current log-probs of update j all use this same mask, so
    their ratio compares like with like (deviation 1 in the module docstring)."""
    g = torch.Generator().manual_seed(rollout_seed * 1000 + inner_step)
    return (torch.rand(shape, generator=g) < p_mask_prompt).to(device)  # (N, P) bool


def sequence_logps(model, ro, is_prompt_masked, mask_id, rows=None):
    """The one-step estimator: per-token log pi(o_k | masked prompt), all completion masked.

    Returns (n, C) for the selected rows (all by default). Computing it in row chunks is the
    caller's job (see chunked_logps) so a big batch's (N, T, V) logits never all exist at once."""
    rows = slice(None) if rows is None else rows
    prompt = torch.where(is_prompt_masked[rows], mask_id, ro.prompt_ids[rows])  # (n, P)
    completion = torch.full_like(ro.completion_ids[rows], mask_id)  # (n, C): every slot masked
    x = torch.cat([prompt, completion], dim=1)  # (n, P + C)
    attention = torch.cat([ro.prompt_attention[rows], torch.ones_like(completion)], dim=1)
    logits = model(x, attention)[:, prompt.size(1):]  # (n, C, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, ro.completion_ids[rows][..., None]).squeeze(-1)  # (n, C)


@torch.no_grad()
def chunked_logps(model, ro, is_prompt_masked, mask_id, chunk_size):
    """sequence_logps for all rows, chunk_size rows at a time, without gradients: (N, C)."""
    N = ro.completion_ids.size(0)
    return torch.cat([sequence_logps(model, ro, is_prompt_masked, mask_id, slice(i, i + chunk_size))
                      for i in range(0, N, chunk_size)])


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps, beta, n_tokens):
    """Algorithm 1, line 9, per token, summed over `mask` and divided by n_tokens (pooled mean).

      rho       = exp(logp - old_logp)
      surrogate = -min(rho A, clip(rho, 1 - eps, 1 + eps) A)      PPO's clipped objective
      kl        = exp(ref - logp) - (ref - logp) - 1               k3 estimator, >= 0, 0 iff equal
    At the first inner update logp == old_logp, so rho = 1 and the surrogate's value is just -A
    (its mean over a group is 0), yet its gradient is the REINFORCE gradient A * grad logp.
    logp etc. (n, C); advantages (n,); mask (n, C). Returns (loss, stats dict of sums)."""
    ratio = torch.exp(logp - old_logp)  # (n, C)
    A = advantages[:, None]  # (n, 1)
    unclipped, clipped = ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A
    surrogate = -torch.min(unclipped, clipped)  # (n, C)
    delta = ref_logp - logp
    kl = torch.exp(delta) - delta - 1  # (n, C)
    loss = ((surrogate + beta * kl) * mask).sum() / n_tokens
    was_clipped = (clipped < unclipped).float()  # the clip changed this token's objective
    stats = {"kl": (kl.detach() * mask).sum().item(), "clipped": (was_clipped * mask).sum().item()}
    return loss, stats
