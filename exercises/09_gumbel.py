"""
Exercise 09 (~15 min): sampling as an argmax: the Gumbel-max noise of LLaDA's sampler, in float64.

Replaces diffusion.add_gumbel_noise (used when temperature > 0: GRPO's rollouts). Then:
    python -m exercises check 09
    python -m exercises run 09 --stage grpo --steps=3   # rollouts sample with YOUR noise
"""

import torch


def add_gumbel_noise(logits, temperature, generator=None):
    """Noise the logits so that their argmax is a sample from softmax(logits / temperature)
    (the Gumbel-max trick, as LLaDA's sampler writes it; LLaDA paper, Appendix B).

        u ~ U(0, 1) per logit,  g = -log u  (an Exponential(1) variable)
        noisy = exp(logits) / g ** temperature

    Why it samples: log(noisy) / temperature = logits / temperature - log(g), and -log(-log u) is
    a standard Gumbel variable; the argmax of logits / T plus Gumbel noise is a sample of
    softmax(logits / T).
    temperature == 0: return the logits unchanged (greedy decoding).

    Precision: cast the logits to float64 BEFORE exp, and draw u in float64. LLaDA's authors found
    that low precision here hurts quality: in float32 exp overflows above ~88, and near-tied noisy
    values round to the same number, which biases the sample.

    logits (..., V) -> (..., V) float64 (the logits themselves when temperature is 0).
    Example: logits [2.0, 0.0], temperature 1: token 0 wins with probability e^2 / (e^2 + 1) = 0.88;
             at temperature 2, e^1 / (e^1 + 1) = 0.73.
    Hint: draw u exactly so (the check replays your draws), then divide:
        u = torch.rand(logits.shape, device=logits.device, dtype=torch.float64, generator=generator)
    """
    raise NotImplementedError("exercise 09: write add_gumbel_noise")
