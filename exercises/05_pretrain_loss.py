"""
Exercise 05 (~15 min): the masked-diffusion loss with its 1/p weight, pretraining case (no prompt).

Replaces diffusion.diffusion_loss for prompt lengths 0 (exercise 06 adds the prompt, and is the
one that plugs into training: pretraining batches also hold chat rows with prompts).
    python -m exercises check 05
"""

import torch
import torch.nn.functional as F

from diffusion import forward_process, masked_token_ce  # the project's (or copy in your exercise 04)


def diffusion_loss(model, x0, prompt_lengths, mask_id, generator=None, rows=None, answers=None):
    """LLaDA's pretraining loss (LLaDA paper, Sec. 2.1), here with every prompt length 0:

        L = 1 / (B T) * sum over rows b and positions i of  is_masked[b, i] * CE(model(xt)[b, i], x0[b, i]) / p_b

    Steps:
        xt, is_masked, p = forward_process(x0, mask_id, generator=generator)   once, before the model
        logits = model(xt)                           (B, T, V): logit i predicts the token AT position i
        ce = cross-entropy at each masked position, 0 elsewhere              (B, T), in float32
        loss = (ce / p).sum() / (B * T)                                       divide by ALL slots

    Why ALL B*T slots and not the number of masked tokens: a row has p * T masked tokens on
    average, each weighted 1/p, so sum(CE / p) over the masked tokens is an unbiased estimate of
    the CE summed over the whole row. Divided by B*T, the loss estimates an upper bound on the
    negative log-likelihood per token (the ELBO). Divide by the masked count instead and that is lost.

    model(ids) -> (B, T, V); x0 (B, T); prompt_lengths (B,) all 0. Returns a scalar tensor with a
    gradient (no .item(), no torch.no_grad()).

    Example: B = 1, T = 4, p = 0.5, two tokens masked, their CE 1.0 and 3.0:
             L = (1.0 / 0.5 + 3.0 / 0.5) / 4 = 2.0
    Hint: F.cross_entropy(logits[is_masked].float(), x0[is_masked], reduction="none") gives one CE
    per masked token; masked_token_ce(logits, x0, is_masked) gives the (B, T) version.

    rows (leave it None here; exercise 06 uses it): the training loop's micro-batches.
    answers (always None here): pretraining's optional drill rows, --drill_share; see diffusion.py.
    """
    raise NotImplementedError("exercise 05: write diffusion_loss (prompt lengths 0)")
