"""
Exercise 03 (~15 min): bidirectional attention with a padding mask, the softmax written out.

Replaces model.eager_attention. Fill it in, then:
    python -m exercises check 03
    python -m exercises run 03 --stage sft --steps=50   # YOUR attention in every layer (it replaces
                                                        # the fused sdpa kernel too for that run)
"""

import math

import torch


def eager_attention(q, k, v, key_mask):
    """softmax(q k^T / sqrt(Dh)) v with NO causal mask, ignoring padded keys.

        scores = q k^T / sqrt(Dh)                      (B, H, T, T): query i (row) against key j (column)
        scores[b, :, :, j] = most negative number      where key_mask[b, j] is False (a padded key)
        out = softmax(scores over the keys, dim=-1) v  (B, H, T, Dh)

    q, k, v: (B, H, T, Dh); key_mask: (B, T) bool, True = a real token; or None (nothing padded).
    A diffusion LM attends in both directions: every position sees every other (LLaDA paper, Sec. 2.1).
    Padding hides KEYS: no query may look at a padded position. Padded QUERY rows are computed like
    any other (they attend to the real keys); their outputs are simply never used.

    Example (B = H = 1, T = 3, Dh = 1): q = k = [[1], [1], [1]], v = [[1], [2], [3]],
             key_mask = [[False, True, True]] -> every output row is (2 + 3) / 2 = 2.5

    Hint: key_mask[:, None, None, :] broadcasts over heads and queries; masked_fill with
    torch.finfo(scores.dtype).min (with -inf, a row with no real key would give NaN).
    """
    raise NotImplementedError("exercise 03: write eager_attention")
