"""
Exercise 11 (~25 min): d1's one-step log-prob estimator and its random prompt mask.

Replaces estimators.prompt_mask and estimators.sequence_logps (Algorithm 1, line 8). Fill in both, then:
    python -m exercises check 11
    python -m exercises run 11 --stage grpo --steps=5   # diffu-GRPO reads log-probs YOUR way
"""

import torch
import torch.nn.functional as F

from common import mix_seed  # mix_seed(seed, step, j) -> one integer seed


def prompt_mask(seed, step, j, shape, p_mask_prompt, device):
    """The random prompt mask of inner update j (d1 paper, Sec. 3.2): each prompt token is masked
    independently with probability p_mask_prompt (d1's runs: 0.15).

    A pure function of (seed, step, j): the old-policy, reference and current log-probs of update j
    are computed at different times and must see the same mask, while update j + 1 sees another.
    So draw from a generator of your own, never from torch's global one.

    shape (N, P) -> (N, P) bool on `device`; True = this prompt token becomes [MASK].
    Example: p_mask_prompt = 0.5, shape (1, 6) -> e.g. [[False, True, True, False, False, True]]
    Hint: g = torch.Generator().manual_seed(mix_seed(seed, step, j)); torch.rand(shape, generator=g) < p,
    then .to(device).
    """
    raise NotImplementedError("exercise 11: write prompt_mask")


def sequence_logps(model, ro, is_prompt_masked, mask_id, rows=slice(None)):
    """d1's one-step estimator (Sec. 3.2): log pi(o_k | q) for every completion token from ONE
    forward pass, on the prompt with some tokens masked and the completion ENTIRELY masked:

        input:  P  P  M  P  P  P  M  P  |  M    M    M    M    M     is_prompt_masked -> mask_id;
                                                                    every completion slot -> mask_id
        read:                              lp1  lp2  lp3  lp4  lp5   log_softmax at completion slot k,
                                                                    at the id the completion has there

    ro, the rollout: ro.prompt_ids (N, P) left-padded, ro.prompt_attention (N, P) (1 = real token,
    0 = padding), ro.completion_ids (N, C). is_prompt_masked (N, P) bool. rows: a slice of the N
    rows to compute (take it from every (N, ...) tensor). Returns (n, C) float32 log-probs that carry
    the gradient (the GRPO loss is differentiated through them: no torch.no_grad()).

    The attention mask is ro.prompt_attention followed by ones for the C completion slots.
    In LLaDA logit i predicts the token AT position i: no shift by one as in GPT.
    Example: C = 2, completion ids [7, 3]: returns [log p(7 at slot P), log p(3 at slot P + 1)].
    Hint: torch.where, torch.cat(dim=1), model(x, attention)[:, P:], F.log_softmax(logits.float(), -1),
    torch.gather(logp, -1, ids[..., None]).squeeze(-1).
    """
    raise NotImplementedError("exercise 11: write sequence_logps")
