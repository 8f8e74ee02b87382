"""
Exercise 06 (~15 min): the same loss with a prompt: d1's masked SFT.

Replaces diffusion.diffusion_loss (pretraining and SFT both call it). Fill it in, then:
    python -m exercises check 06
    python -m exercises run 06 --stage sft --steps=100   # d1's SFT with YOUR loss
(`run` turns SFT's drill rows off, --trace_drills=0 --drill_share=0: they need `answers`, below.)
"""

import torch
import torch.nn.functional as F

from diffusion import forward_process, masked_token_ce  # the project's (or copy in your exercise 04)


def diffusion_loss(model, x0, prompt_lengths, mask_id, generator=None, rows=None, answers=None):
    """The masked-diffusion loss with a prompt (d1 paper, Zhao et al. 2025, Sec. 3.1; LLaDA paper,
    Sec. 2.3). Exercise 05's pretraining loss is the case where every prompt length is 0.

        row x0:  P P P P R R R R E E E E     P prompt, R response, E EOS padding up to T
        xt:      P P P P M R M M E M E M     the prompt stays clean; R and E may be masked
        loss:    row b: sum of CE / p_b over its masked R and E tokens, divided by T - P_b;
                 then the mean over the rows

    - The prompt is the condition: never masked and never scored.
    - The EOS padding IS scored: a diffusion model writes every slot of a fixed-length canvas;
      predicting EOS is how it learns where its answer ends.
    - Each row is divided by its answer length T - P_b (response + padding). With P = 0 that is T,
      and the mean over rows of sum/T is sum/(B T): exercise 05's loss.

    x0 (B, T); prompt_lengths (B,) long. Returns a scalar tensor with a gradient.

    Example: T = 8, P = 3, p = 0.5, two masked answer tokens with CE 1.0 and 2.0:
             (1.0 / 0.5 + 2.0 / 0.5) / (8 - 3) = 1.2 for that row
    Draw the noise as in exercise 05 (forward_process on the whole (B, T), once, first); then put
    the prompt back into xt and drop the prompt's positions from is_masked.
    Hint: is_prompt = torch.arange(T, device=x0.device)[None, :] < prompt_lengths[:, None]   (B, T);
          answer lengths (T - prompt_lengths).clamp(min=1).float()

    rows: None, or a slice of the batch (the training loop's micro-batches, or one process's share
    under torchrun). Draw the noise for the WHOLE batch as always, then keep only `rows` of x0, xt,
    is_masked, is_prompt, p and prompt_lengths before the model runs, and return the sum of those
    rows' values divided by the whole batch's B (rows=None: all rows, i.e. the mean over rows), so
    the parts of a batch add up to its loss.
    answers: not part of this exercise (always None in its checks): the drill rows of pretraining
    (--drill_share) and SFT (--trace_drills, --drill_share), which the project's diffusion_loss
    scores at full noise.
    """
    raise NotImplementedError("exercise 06: write diffusion_loss (with prompts)")
