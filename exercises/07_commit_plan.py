"""
Exercise 07 (~10 min): the sampler's commit plan: how many tokens each step unmasks.

Replaces diffusion.commit_plan (generate() calls it once per block). Fill it in, then:
    python -m exercises check 07
    python -m exercises run 07 --stage grpo --steps=3   # GRPO's rollouts use YOUR plan
"""

import torch


def commit_plan(n_masked, steps):
    """Spread each row's n_masked tokens over `steps` sampler steps as evenly as possible, the
    remainder going to the FIRST steps (LLaDA's sampler, LLaDA paper, Sec. 2.4 and Appendix B).

        base = n // steps,  extra = n % steps
        plan[b, s] = base_b + 1  if s < extra_b  else base_b

    n_masked (B,) long -> (B, steps) long; row b sums to n_masked[b], so a block is fully unmasked
    after its last step.

    Example: n_masked = [10, 3], steps = 4 -> [[3, 3, 2, 2], [1, 1, 1, 0]]
    Hint: // and %, then compare torch.arange(steps)[None, :] with extra[:, None].
    """
    raise NotImplementedError("exercise 07: write commit_plan")
