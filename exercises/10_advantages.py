"""
Exercise 10 (~10 min): group-relative advantages, Algorithm 1 line 6 of d1.

Replaces grpo.group_advantages. Fill it in, then:
    python -m exercises check 10
    python -m exercises run 10 --stage grpo --steps=5   # diffu-GRPO with YOUR advantages
"""

import torch


def group_advantages(rewards, group_size, scale_by_std=False):
    """Each completion's advantage is its reward minus the mean reward of its group, the G
    completions of the same question (d1 paper, Sec. 3.2, Algorithm 1 line 6):

        A_i = r_i - mean(r_1 .. r_G)                              d1's runs: no std division
        A_i = (r_i - mean(r)) / (std(r) + 1e-4)   if scale_by_std  the original GRPO (std with n - 1,
                                                                   torch's default)

    rewards (N,) with N = questions x G, the G completions of a question in CONSECUTIVE rows.
    Returns (N,).

    Example: rewards [1, 0, 0, 1, 0, 0,  0, 0, 0, 0, 0, 1], G = 6 (two questions)
             -> [2/3, -1/3, -1/3, 2/3, -1/3, -1/3,  -1/6, -1/6, -1/6, -1/6, -1/6, 5/6]
    A group whose rewards are all equal gets advantage 0: it teaches nothing.
    Hint: rewards.view(-1, group_size) is (questions, G); keepdim=True keeps the broadcast simple.
    """
    raise NotImplementedError("exercise 10: write group_advantages")
