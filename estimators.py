"""
Line 8 of diffu-GRPO (Algorithm 1), three ways: how the log-probability of a rollout is estimated.

    python train.py --stage grpo                                 # d1's one-step estimator (the default)
    python train.py --stage grpo --estimator=coupled             # complementary masks (DiffuCoder)
    python train.py --stage grpo --estimator=elbo --elbo_samples=2   # a 2-sample ELBO, per sequence (ESPO)
    python -m pytest tests/test_estimators.py

GRPO needs log pi(o | q) of every rollout, token by token. A masked diffusion LM has no
left-to-right factorisation, so every diffusion RL method estimates it from forward passes on
partly masked copies of (prompt, completion). All three estimators here mask the prompt as d1
does (each token with probability p_mask_prompt, a new mask for each inner update j: prompt_mask)
and differ in what they do to the completion. P prompt token, M [MASK], o_k completion token k:

d1, the one-step estimator (d1 paper, arXiv 2504.12216, Sec. 3.2): ONE forward pass, the whole
completion masked. Token k's estimate is log p(o_k | masked prompt): a mean-field guess that sees
none of the other completion tokens. Cheap and biased.

    P  M  P  P | M   M   M   M   M   M        1 forward
                 lp1 lp2 lp3 lp4 lp5 lp6      lp_k = log p(o_k | this input), every k

coupled, complementary masks (DiffuCoder's coupled-GRPO, arXiv 2506.20639; reused by ESPO): TWO
forward passes. Each row draws a noise level t ~ U(0, 1) and a mask that hides each completion
token with probability t; the second pass hides exactly the other tokens. Every token is masked in
exactly one of the two passes and its log-prob is read there, with the other pass's share of the
completion in view, so each token is scored once, in context:

    pass 1  P  M  P  P | M   o2  M   o4  o5  M        t = 0.5: tokens 1, 3, 6 masked
    pass 2  P  M  P  P | o1  M   o3  M   M   o6       the complement: 2, 4, 5
                         lp1 lp2 lp3 lp4 lp5 lp6      lp_k from the pass that masks k; 2 forwards

elbo, a K-sample ELBO (LLaDA's bound, diffusion.py; the sequence likelihood of SPG, arXiv
2510.09541, ESPO, arXiv 2512.03759, and BGPO, arXiv 2510.11683): K forward passes (--elbo_samples).
Pass s draws its noise level in the s-th of K equal strata, t_s = (s + u) / K with one u ~ U(0, 1)
per row, masks each completion token with probability p_s = (1 - eps) t_s + eps (as
diffusion.forward_process), and weighs each masked token's log-prob by 1 / (K p_s):

    pass 1  P  M  P  P | o1  M   o3  o4  o5  o6       t_1 in [0, 1/2): weight 1 / (2 p_1) where masked
    pass 2  P  M  P  P | M   M   o3  M   M   M        t_2 in [1/2, 1): weight 1 / (2 p_2) where masked
            ELBO = sum_s sum_(k masked in s) log p(o_k | pass s) / (K p_s)      K forwards

  In expectation this is LLaDA's training objective (diffusion.diffusion_loss, negated), a lower
  bound on log pi(o | q), whatever K; more passes only lower its variance. Its per-token terms are
  no log-probs (a token masked in no pass has 0, one masked at a small p counts many times), so the
  ELBO enters the loss per SEQUENCE, as ESPO's does: rho_i = exp((ELBO_theta - ELBO_old) / L_i), L_i
  the row's tokens in the loss, clipped per sequence, and the k3 KL of (ELBO_ref - ELBO_theta) / L_i
  (loss_logps, before grpo.grpo_loss). At ratio 1 the gradient is
  REINFORCE's with the ELBO as the log-likelihood, A_i grad ELBO_i, as d1's is A_i sum_k grad lp_k.

Every estimator's masks of inner update j are a pure function of (seed, step, j), drawn for the
whole step's rows and cut to this process's (prompt_mask, completion_weights): pi_theta, pi_old and
pi_ref of update j see the same masks, so the ratio is exactly 1 at the first update, and a run's
numbers do not depend on how many processes share the step.

Cost per log-prob: 1, 2 or K forward passes (in the old/reference log-probs and in every update).
The passes of a --logp_chunk chunk run one after the other: without gradients one pass's logits
are in memory at a time, as d1's; in the update a chunk's S passes keep their activations until its
backward, S times d1's (--logp_chunk divided by S keeps d1's memory).

Choices, and where this differs from the papers:
  1. coupled and elbo keep d1's random prompt mask, a regulariser (--p_mask_prompt=0: a clean prompt).
  2. coupled draws t ~ U(0, 1) per row, a Bernoulli mask per token, and reads its log-probs
     unweighted: per-token estimates for d1's per-token loss, nothing else changes.
  3. elbo draws independent masks at stratified noise levels (ESPO couples them as coupled does),
     keeps d1's k3 KL (ESPO estimates the KL more robustly), uses the lower bound for every advantage
     (SPG takes an upper bound for negative ones; BGPO a linear bound whose memory does not grow
     with K).
  4. The ELBO of the loss sums the tokens of the loss only (up to and including the first EOS, as
     d1's loss: grpo.py deviation 3); the EOS padding after it is masked and seen, never scored.
"""

import torch
import torch.nn.functional as F

from common import mix_seed, row_slices
from diffusion import EPS

ESTIMATORS = ("d1", "coupled", "elbo")  # --estimator: d1's one step (the default), or later work's
# The completion masks' generator is seeded by (seed, step, j, COMPLETION_STREAM), the prompt mask's by
# (seed, step, j) and a rollout row's by (seed, step, q, i < G): three streams apart for any G below 10^6.
COMPLETION_STREAM = 1_000_000


def prompt_mask(seed, step, j, shape, p_mask_prompt, device):
    """The random prompt mask of inner update j: a pure function of (seed, step, j).

    The old-policy, reference and current log-probs of update j all use this same mask, so their
    ratio compares like with like (grpo.py deviation 1). On several processes each draws the whole
    step's mask (all rows) and takes its own rows, so a row's mask does not depend on the split."""
    g = torch.Generator().manual_seed(mix_seed(seed, step, j))
    return (torch.rand(shape, generator=g) < p_mask_prompt).to(device)  # (N, P) bool


def completion_weights(estimator, seed, step, j, shape, samples, device, rows=slice(None)):
    """The completion masks of inner update j, as one weight per pass and token: (S, n, C) float.

    weight > 0 where pass s masks token k, and it is what that token's log-prob counts for there:
    coupled, S = 2: 1 in the pass that masks the token, 0 in the other; elbo, S = samples: 1 / (K p_s)
    where masked, else 0. d1 draws nothing (one pass, every token masked, weight 1): None.
    shape: (N, C), the whole step's rows; rows: this process's of them. A pure function of (seed,
    step, j), from a stream of its own (COMPLETION_STREAM)."""
    if estimator == "d1":
        return None
    g = torch.Generator().manual_seed(mix_seed(seed, step, j, COMPLETION_STREAM) % 2**64)  # torch seeds: 64 bits
    N, C = shape
    if estimator == "coupled":
        t = torch.rand(N, 1, generator=g)  # (N, 1): one noise level per row
        masked = torch.rand(N, C, generator=g) < t  # (N, C): pass 1's mask
        weights = torch.stack([masked, ~masked]).float()  # (2, N, C): pass 2 masks the complement
    elif estimator == "elbo":
        K = samples
        t = (torch.arange(K)[:, None, None] + torch.rand(1, N, 1, generator=g)) / K  # (K, N, 1): stratum s
        p = (1 - EPS) * t + EPS  # (K, N, 1): the mask probability of pass s
        masked = torch.rand(K, N, C, generator=g) < p  # (K, N, C)
        weights = masked / (K * p)  # (K, N, C): 1 / (K p_s) where masked
    else:
        raise ValueError(f"estimator={estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    return weights[:, rows].to(device)


def sequence_logps(model, ro, is_prompt_masked, mask_id, rows=slice(None)):
    """d1's one-step estimator: per-token log pi(o_k | masked prompt) from ONE forward pass with every
    completion slot masked (the first picture above). ro: the rollout (eval.Completions).
    Returns (n, C) for the selected rows, with gradients."""
    every_slot = torch.ones_like(ro.completion_ids, dtype=torch.bool)  # (N, C)
    return pass_logps(model, ro, is_prompt_masked, every_slot, mask_id, rows)


def pass_logps(model, ro, is_prompt_masked, is_completion_masked, mask_id, rows=slice(None)):
    """One forward pass of every estimator: the rollout with the marked prompt and completion slots
    masked, and log p(o_k | this input) read at every completion slot k: (n, C) for the selected rows.
    A slot left unmasked shows its own token, so its log-prob estimates nothing (weight 0 in
    estimate_logps). Callers take the rows in chunks: a big batch's (N, T, V) logits never all exist."""
    prompt = torch.where(is_prompt_masked[rows], mask_id, ro.prompt_ids[rows])  # (n, P)
    ids = ro.completion_ids[rows]  # (n, C)
    completion = torch.where(is_completion_masked[rows], mask_id, ids)  # (n, C)
    x = torch.cat([prompt, completion], dim=1)  # (n, P + C)
    attention = torch.cat([ro.prompt_attention[rows], torch.ones_like(completion)], dim=1)  # (n, P + C)
    logits = model(x, attention)[:, prompt.size(1):]  # (n, C, V)
    logp = F.log_softmax(logits.float(), dim=-1)  # (n, C, V)
    return torch.gather(logp, -1, ids[..., None]).squeeze(-1)  # (n, C)


def estimate_logps(model, ro, is_prompt_masked, mask_id, rows=slice(None), weights=None):
    """Line 8 with any estimator: per-token estimates (n, C) of the selected rows, with gradients.

    weights None: d1's one pass, sequence_logps. Otherwise completion_weights' (S, N, C): one
    forward per pass s, masking the tokens of positive weight, and the estimate of token k is
        sum_s weight_sk * log p(o_k | pass s)
    coupled: the log-prob from the one pass that masks k; elbo: the ELBO's terms, whose sum over a
    row is its ELBO. The passes run one after the other (one pass's logits at a time)."""
    if weights is None:
        return sequence_logps(model, ro, is_prompt_masked, mask_id, rows)
    estimate = 0.0
    for w in weights:  # (N, C): one pass
        logp = pass_logps(model, ro, is_prompt_masked, w > 0, mask_id, rows)  # (n, C)
        estimate = estimate + w[rows] * logp  # (n, C): unmasked slots add 0
    return estimate


@torch.no_grad()
def chunked_logps(model, ro, is_prompt_masked, mask_id, chunk_size, weights=None):
    """estimate_logps for all rows, chunk_size rows at a time, without gradients: (N, C)."""
    return torch.cat([estimate_logps(model, ro, is_prompt_masked, mask_id, rows, weights)
                      for rows in row_slices(ro.completion_ids.size(0), chunk_size)])


def loss_logps(estimator, mask, *logps):
    """What grpo_loss reads of (n, C) estimates (the current, old and reference ones): d1's and
    coupled's per-token log-probs as they are; for the ELBO (ESPO), each row's sum over its L loss
    tokens (mask), divided by L, on every slot of the row:

        terms  [-9 -3 -6  0 ]   mask [1 1 1 0]   ->   [-6 -6 -6 -6]     ELBO -18 over L = 3 tokens
    The per-token loss then sees one ratio exp((ELBO - ELBO_old) / L) on each of the row's L tokens:
    a sequence-level ratio and KL, clipped per sequence, counted L times as d1's loss counts a row's
    L tokens, so at ratio 1 the gradient is A grad ELBO."""
    if estimator != "elbo":
        return logps
    L = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (n, 1)
    return tuple(((x * mask).sum(dim=1, keepdim=True) / L).expand_as(x) for x in logps)  # (n, C) each
