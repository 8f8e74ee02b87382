"""
Exercise 12 (~20 min): the clipped surrogate with the k3 KL, Algorithm 1 line 9 of d1.

Replaces grpo.grpo_loss. Fill it in, then:
    python -m exercises check 12
    python -m exercises run 12 --stage grpo --steps=5   # diffu-GRPO minimises YOUR loss
"""

import torch


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps, beta, n_tokens):
    """PPO's clipped surrogate plus beta times a KL to the reference policy, per token, pooled over
    all loss tokens (d1 paper, Sec. 3.2, Algorithm 1 line 9):

        rho       = exp(logp - old_logp)                             (n, C) probability ratio
        surrogate = -min(rho A, clip(rho, 1 - eps, 1 + eps) A)        A = the row's advantage
        delta     = ref_logp - logp
        kl        = exp(delta) - delta - 1                            the k3 estimator: >= 0, 0 iff equal
        loss      = sum((surrogate + beta kl) * mask) / n_tokens

    logp (n, C) with a gradient; old_logp, ref_logp (n, C) fixed; advantages (n,); mask (n, C) 1.0
    on the tokens up to and including the first EOS; eps (d1's runs: 0.5); beta (d1: 0.04);
    n_tokens: the loss tokens of the whole batch (rows may arrive in chunks, so not mask.sum()).
    Returns (loss, stats): loss a scalar tensor; stats = {"kl": sum of kl * mask, "clipped": the
    number of masked tokens whose clipped term is smaller than the unclipped one}, Python floats.

    The min keeps the pessimistic term: once rho has moved past 1 + eps with A > 0 (or below 1 - eps
    with A < 0) the gradient stops; moving the other way is never clipped.
    At the first inner update logp == old_logp, so rho = 1 and the surrogate's value is -A (mean 0
    over a group), yet its gradient is A * grad logp: REINFORCE with the group baseline.

    Example: one token, logp = old_logp = ref_logp, A = 0.5, beta 0.04 -> loss -0.5, kl 0, clipped 0.
    Hint: torch.clamp, torch.min; .item() only for the stats.
    """
    raise NotImplementedError("exercise 12: write grpo_loss")
