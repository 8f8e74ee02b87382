"""
Masked diffusion: the forward (noising) process, the training loss, the sampler, and the
likelihood estimator. Everything here is model-agnostic: `model(x, attention_mask) -> logits`
(the sampler's optional cache also passes model.KVCache as `kv_cache`).

The idea in one picture. A masked diffusion LM learns to undo random masking:

    clean     x0 :  The  cat  sat  on   the  mat
    t = 0.5   xt :  The  [M]  sat  [M]  the  [M]      each token masked with probability ~t
    model(xt)    :        cat       on        mat     predict every masked token at once

Training (LLaDA paper, Sec. 2.1): draw t ~ U(0,1) per sequence, mask each token with probability
p = (1 - eps) t + eps, and minimise the cross-entropy on masked tokens weighted by 1/p. This is an
upper bound on the negative log-likelihood (the diffusion ELBO).

Sampling (LLaDA paper, Sec. 2.4 and Appendix B): start from a fully masked answer and unmask a few
tokens per step, the ones the model is most confident about, block by block from left to right.

    from diffusion import generate
    out = generate(model, prompt_ids, steps=64, gen_length=64, block_length=32)   # (B, P + 64)
    out = generate(model, prompt_ids, gen_length=64, cache="dual", threshold=0.9)   # fast (Fast-dLLM)
"""

import torch
import torch.nn.functional as F

from model import KVCache

EPS = 1e-3  # LLaDA's minimum mask probability: p = (1 - EPS) t + EPS never reaches 0.


# -----------------------------------------------------------------------------
# Forward process and losses


def forward_process(x0, mask_id, eps=EPS, generator=None):
    """Mask each token of each row independently with that row's probability p = (1-eps) t + eps.

    x0: (B, T) clean tokens. Returns xt (B, T), is_masked (B, T) bool, p (B, 1)."""
    B, T = x0.shape
    t = torch.rand(B, 1, device=x0.device, generator=generator)  # (B, 1): one noise level per row
    p = (1 - eps) * t + eps  # (B, 1)
    is_masked = torch.rand(B, T, device=x0.device, generator=generator) < p  # (B, T)
    xt = torch.where(is_masked, mask_id, x0)  # (B, T)
    return xt, is_masked, p


def masked_token_ce(logits, targets, is_masked):
    """Cross-entropy of every masked position, 0 elsewhere. logits (B, T, V) -> (B, T) fp32."""
    ce = torch.zeros(targets.shape, device=logits.device, dtype=torch.float32)  # (B, T)
    ce[is_masked] = F.cross_entropy(logits[is_masked].float(), targets[is_masked], reduction="none")
    return ce


def diffusion_loss(model, x0, prompt_lengths, mask_id, generator=None, rows=None, answers=None):
    """LLaDA's masked-diffusion loss, for pretraining and for SFT (LLaDA paper, Sec. 2.1 and 2.3;
    d1 paper, Sec. 3.1): noise x0, predict the masked tokens, weight each one's CE by 1/p.

    x0: (B, T) = prompt, response, EOS padding; prompt_lengths: (B,) number of prompt tokens, which
    are never masked. Each row's sum of CE / p is divided by that row's answer length (T - P), then
    the rows are averaged:
        row:  P P P P R R R R E E E E      P prompt (kept clean), R response, E EOS padding
        mask: . . . . M . M M . M . M      only R and E can be masked; E is in the loss, which is
                                            how a diffusion model learns where to stop.
    Pretraining is the case P = 0: the loss is then sum(CE / p) / (B * T), over ALL slots, not only
    the masked ones. That is what makes the 1/p weighting an unbiased estimate of the ELBO: in
    expectation p * T tokens are masked, each weighted by 1/p.

    rows: a slice of the batch to compute (a micro-batch, or one process's share): the noise is
    drawn for the whole batch as always, so the parts sum to the whole-batch loss exactly; the
    result is that part's contribution, sum over its rows / B.

    answers: (B, T) bool or None, pretraining's drill rows (pretrain.py, --drill_share): a row with
    any True is scored at full noise, t = 1: exactly its answer tokens masked, everything else clean,
    the mean CE of its answers (p = 1, so the 1/p weight is 1). Other rows are noised as above.
        drill row:  7 + 8 = M M E 3 - 1 = M E ...     "7+8=15", "3-1=2": every answer masked"""
    B, T = x0.shape
    positions = torch.arange(T, device=x0.device)  # (T,)
    is_prompt = positions[None, :] < prompt_lengths[:, None]  # (B, T)
    xt, is_masked, p = forward_process(x0, mask_id, generator=generator)  # the whole batch's noise
    answer_lengths = (T - prompt_lengths).clamp(min=1).float()  # (B,)
    if answers is not None:  # drill rows: their answers masked, the rest clean, at p = 1
        drill = answers.any(dim=1)  # (B,)
        is_masked = torch.where(drill[:, None], answers, is_masked)
        is_prompt = is_prompt & ~drill[:, None]
        p = torch.where(drill[:, None], 1.0, p)
        answer_lengths = torch.where(drill, answers.sum(dim=1).float(), answer_lengths)
    rows = slice(None) if rows is None else rows
    x0, is_masked, is_prompt, p = x0[rows], is_masked[rows], is_prompt[rows], p[rows]
    is_masked = is_masked & ~is_prompt
    xt = torch.where(is_masked, mask_id, x0)  # the prompt (and a drill's questions) clean
    logits = model(xt)  # (b, T, V)
    ce = masked_token_ce(logits, x0, is_masked)  # (b, T)
    return ((ce / p).sum(dim=1) / answer_lengths[rows]).sum() / B


# -----------------------------------------------------------------------------
# Sampling: LLaDA's semi-autoregressive low-confidence remasking

REMASKING = ("low_confidence", "random")  # which masked tokens a step commits: most confident, or any
CACHES = (None, "prefix", "dual")  # generate(cache=...): none (the reference), or Fast-dLLM's two caches


def check_sampler(gen_length, block_length, steps, keys=("gen_length", "block_length", "steps")):
    """Refuse sampler sizes generate() cannot run, naming the keys and numbers (before any work)."""
    g, b, s = (f"--{key}={value}" for key, value in zip(keys, (gen_length, block_length, steps)))
    if min(gen_length, block_length, steps) < 1:
        raise ValueError(f"{g}, {b} and {s}: each must be at least 1")
    if gen_length % block_length:
        raise ValueError(f"{g} must be a multiple of {b}")
    if steps % (gen_length // block_length):
        raise ValueError(f"{s} must be a multiple of the number of blocks ({g} / {b} = {gen_length // block_length})")


def add_gumbel_noise(logits, temperature, generator=None):
    """Turn argmax into sampling from softmax(logits / temperature) (the Gumbel-max trick).

    exp(l) / (-log u)^T has the same argmax as l / T - log(-log u), i.e. a Gumbel-max sample.
    It is computed in float64 because LLaDA's authors found low precision here hurts quality:
    in bf16/fp32 the noise of near-tied logits is quantised and sampling becomes biased."""
    if temperature == 0:
        return logits
    # In place after the two float64 arrays exist: LLaDA-8B's (rows, T, 126,464) logits make each one
    # GBs (memory.py counts them). The values are those of exp(logits) / (-log u)^T written plainly.
    noisy = logits.to(torch.float64, copy=True)  # never the caller's tensor, even if it is float64
    u = torch.rand(logits.shape, device=logits.device, dtype=torch.float64, generator=generator)
    return noisy.exp_().div_(u.log_().neg_().pow_(temperature))


def commit_plan(n_masked, steps):
    """How many tokens to unmask at each step of a block: spread n_masked as evenly as possible.

    n_masked: (B,) masked positions per row. Returns (B, steps), rows summing to n_masked.
    Example: 10 tokens over 4 steps -> [3, 3, 2, 2]."""
    base = n_masked[:, None] // steps  # (B, 1)
    extra = n_masked[:, None] % steps  # (B, 1): the first `extra` steps commit one more
    return base + (torch.arange(steps, device=n_masked.device)[None, :] < extra).long()  # (B, steps)


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=32, temperature=0.0, cfg_scale=0.0,
             remasking="low_confidence", mask_id=None, attention_mask=None, generator=None, on_step=None,
             cache=None, threshold=None, refresh_every=None, stop_ids=None):
    """LLaDA's sampler. prompt (B, P) of token ids, left-padded if rows differ in length (then pass
    attention_mask (B, P), 1 = real token). Returns (B, P + gen_length); the prompt is unchanged.

    generator: one torch.Generator for the whole batch (or None: torch's global one), or a list of
    B generators, one per row. With the list, each row draws its own noise from its own generator,
    so a row's answer depends only on its prompt, the length T and its generator, not on which
    other rows share the batch (GRPO's rollouts: the same on 1 or 8 processes, see grpo.py).
    remasking: which masked tokens a step commits, "low_confidence" (the most confident) or
    "random" (any), for every row, or a list of B of them, one per row (GRPO's mixed rollouts).

    The answer is cut into blocks filled left to right ("semi-autoregressive"); inside a block the
    masked positions are filled over steps/num_blocks steps, a planned number per step:

        prompt        | block 0         | block 1         |
        P P P P P P P | M M M M M M M M | M M M M M M M M |   step 0: predict every [M]
        P P P P P P P | M a M M b M M M | M M M M M M M M |   commit the k most confident in block 0
        P P P P P P P | c a d e b f g h | M M M M M M M M |   block 0 done; then block 1 ...

    Committed tokens are never re-masked. Positions right of the current block are predicted
    (the model sees the whole sequence) but never committed before their block.
    on_step(x, step): optional callback after each step (one model forward pass each), e.g. to show
    the answer filling in, or to count the steps taken.

    Fast sampling (Fast-dLLM, Wu et al. 2025, arXiv 2505.22618); both off by default:
      cache="prefix"  each block's first step runs the whole sequence and records every layer's
                      keys and values (model.KVCache); its other steps run only the block and what
                      lies right of it, reading the prompt's and finished blocks' from the record.
      cache="dual"    the same, but the steps run the block alone: the positions right of it are
                      read from the record too. refresh_every=N also re-records every N steps inside
                      a block (1: every step, which is the reference sampler exactly).
      threshold=0.9   parallel decoding: a step commits every masked token of the block whose
                      probability exceeds the threshold, and at least one (the first by `remasking`:
                      the most confident, or a random one), so easy stretches take fewer steps and
                      unsure ones up to one per token; `steps` is then unused (at most block_length
                      steps per block).

    Early stop (off by default): stop_ids, the ids that end an answer (end of turn, EOS). Once a row
    has committed one of them with nothing masked before it, no later step can change its text up to
    that stop (committed tokens stay). So each block runs only the rows still writing (a row that has
    ended is retired at the next block's start, and the KV cache is recorded for the rest), and the
    sampler returns once every row has ended; the positions it did not reach stay [MASK]. Every
    row's text up to its first stop is then the reference's exactly, in fewer and smaller steps, for
    greedy decoding or per-row generators (eval.py's scores, GRPO's rollouts). With temperature > 0
    and one shared generator, the draws of the rows retired are not made, so the others' differ."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    B, P = prompt.shape
    check_sampler(gen_length, block_length, steps)
    check_per_row(remasking, generator, B)
    check_fast_sampler(cache, threshold, refresh_every)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks if threshold is None else block_length  # threshold: an upper bound

    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)  # (B, T)
    x[:, :P] = prompt
    T = x.size(1)
    if attention_mask is not None:
        attention_mask = torch.cat([attention_mask, torch.ones_like(x[:, P:])], dim=1)  # (B, T)
    is_prompt = x != mask_id  # (B, T): what classifier-free guidance masks out
    kv_cache = None if cache is None else KVCache()

    step = 0
    live = torch.arange(B, device=x.device)  # the rows still writing (early stop retires the others)
    for block in range(num_blocks):
        block_start, block_end = P + block * block_length, P + (block + 1) * block_length
        if stop_ids is not None:  # retire the rows that have ended: the block runs the others only
            live = live[~answers_ended(x[live, P:], stop_ids, mask_id)]
        rows = _live_rows(live, attention_mask, is_prompt, generator, remasking)  # their per-row inputs
        plan = commit_plan((x[live, block_start:block_end] == mask_id).sum(1), steps_per_block)  # (b, steps)
        for i in range(steps_per_block):
            if threshold is not None and not (x[live, block_start:block_end] == mask_id).any():
                break  # parallel decoding finished the block early
            # The positions this step runs, lo..hi-1: all of them without a cache, or to (re)fill it
            # (a block's first step); else the block (dual cache) or the block and all right of it.
            if kv_cache is None:
                lo, hi = 0, T
            elif i == 0 or (refresh_every and i % refresh_every == 0):
                lo, hi = 0, T
                kv_cache.fill()
            else:
                lo, hi = block_start, block_end if cache == "dual" else T
                kv_cache.use(lo, hi)
            running = x[live, lo:hi]  # (b, hi - lo): the live rows' positions this step runs
            logits = _guided_logits(model, running, rows["attention_mask"], rows["is_prompt"][:, lo:hi], mask_id,
                                    cfg_scale, kv_cache)  # (b, hi - lo, V)
            x0, commit = _commit(logits, running == mask_id, block_end - lo, plan[:, i], rows["remasking"],
                                 temperature, threshold, rows["generator"])  # (b, hi - lo) each
            x = x.clone()  # a new tensor per step (on_step may keep the last one)
            x[live, lo:hi] = torch.where(commit, x0, running)
            step += 1
            if on_step is not None:
                on_step(x, step)
            if stop_ids is not None and every_answer_ended(x[live, P:], stop_ids, mask_id):
                return x
    return x


def answers_ended(answers, stop_ids, mask_id):
    """(B,) bool: which rows of answers (B, C) hold one of stop_ids with no [MASK] left before it."""
    masked_before = (answers == mask_id).cumsum(dim=1)  # (B, C): [MASK]s up to and including each position
    ended = torch.isin(answers, torch.tensor(stop_ids, device=answers.device)) & (masked_before == 0)  # (B, C)
    return ended.any(dim=1)


def every_answer_ended(answers, stop_ids, mask_id):
    """True when every row of answers (B, C) has ended (answers_ended)."""
    return bool(answers_ended(answers, stop_ids, mask_id).all())


def _live_rows(live, attention_mask, is_prompt, generator, remasking):
    """generate()'s per-row inputs for the rows `live` (indices): the attention mask, the
    prompt marks, and the generator and remasking rule where they are lists of one per row."""
    def pick(per_row):
        return [per_row[i] for i in live.tolist()] if isinstance(per_row, (list, tuple)) else per_row
    return {"attention_mask": None if attention_mask is None else attention_mask[live],
            "is_prompt": is_prompt[live], "generator": pick(generator), "remasking": pick(remasking)}


def check_per_row(remasking, generator, B):
    """Refuse a remasking rule generate() does not know, and per-row lists that do not give B rows one each."""
    for rule in (remasking if isinstance(remasking, (list, tuple)) else [remasking]):
        if rule not in REMASKING:
            raise ValueError(f"remasking={rule!r}; expected one of {', '.join(REMASKING)}")
    for name, given in (("remasking rules", remasking), ("generators", generator)):
        if isinstance(given, (list, tuple)) and len(given) != B:
            raise ValueError(f"{len(given)} {name} for {B} rows: pass one per row, or one for all")


def check_fast_sampler(cache, threshold, refresh_every=None):
    """Refuse fast-sampling options generate() cannot run, naming the key (before any work)."""
    if cache not in CACHES:
        raise ValueError(f"--cache={cache!r}: expected one of {', '.join(map(str, CACHES))}")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"--threshold={threshold}: must be more than 0 and at most 1 (or None: off)")
    if refresh_every is not None and (refresh_every < 1 or cache is None):
        raise ValueError(f"refresh_every={refresh_every}: must be at least 1, with a cache")


def _commit(logits, is_masked, block_end, k, remasking, temperature, threshold, generator):
    """One step's proposals and which of them to commit, over the positions the step ran.

    logits (B, S, V) and is_masked (B, S) of the S positions run; block_end: where the block ends,
    counted from the first of them; k (B,) the planned number per row. Returns x0 (B, S), the
    proposed tokens, and commit (B, S) bool.
    generator: one for all rows, or a list of B (one per row: see _per_row). remasking: one rule for
    all rows, or a list of B; a low-confidence row draws no random order, so it samples as it would
    in a batch of low-confidence rows."""
    in_block = torch.arange(logits.size(1), device=logits.device) < block_end  # (S,): nothing right of the block yet
    can_commit = is_masked & in_block  # (B, S): the positions this step may commit
    B, S = is_masked.shape
    rules = remasking if isinstance(remasking, (list, tuple)) else [remasking] * B
    by_confidence = [rule == "low_confidence" for rule in rules]  # (B,) which rows commit the most confident
    if isinstance(generator, (list, tuple)):
        x0 = _per_row(lambda b, g: add_gumbel_noise(logits[b], temperature, g).argmax(dim=-1),
                      lambda b: logits[b].argmax(dim=-1), generator, can_commit)  # (B, S) proposals
    else:
        x0 = add_gumbel_noise(logits, temperature, generator).argmax(dim=-1)  # (B, S) proposals
    if any(by_confidence) or threshold is not None:
        probs = F.softmax(logits.float(), dim=-1)  # noise-free confidence
        p_x0 = torch.gather(probs, -1, x0[..., None]).squeeze(-1)  # (B, S)
    if all(by_confidence):
        confidence = p_x0
    elif isinstance(generator, (list, tuple)):
        def row_confidence(b, g):
            return p_x0[b] if by_confidence[b] else torch.rand(S, device=x0.device, generator=g)
        confidence = _per_row(row_confidence, lambda b: torch.zeros(S, device=x0.device), generator,
                              can_commit)  # (B, S)
    else:
        confidence = torch.rand(x0.shape, device=x0.device, generator=generator)  # (B, S)
        if any(by_confidence):
            confidence = torch.where(torch.tensor(by_confidence, device=x0.device)[:, None], p_x0, confidence)
    confidence = torch.where(can_commit, confidence, -torch.inf)  # committed tokens stay
    if threshold is None:
        return x0, _top_k_per_row(confidence, k)
    # Fast-dLLM's confidence-aware parallel decoding (Wu et al. 2025): every candidate whose probability
    # clears the threshold, plus the first by confidence, so each unfinished row moves by one at least.
    candidate = confidence > -torch.inf  # (B, S)
    first = _top_k_per_row(confidence, candidate.any(dim=1).long())
    return x0, first | (candidate & (p_x0 > threshold))


def _per_row(draw, idle, generators, can_commit):
    """A step's random draws row by row, row b from generators[b]: torch.stack([draw(b, g_b)]).

    A row with nothing left to commit in the block (can_commit[b] all False) draws nothing (idle(b): a
    placeholder it will not commit). That only happens with threshold decoding, whose batch steps
    on until its LAST row finishes the block: a finished row must not spend its generator's numbers
    on steps that exist only because of the other rows."""
    live = can_commit.any(dim=1).tolist()  # (B,) one device sync, not one per row
    return torch.stack([draw(b, g) if live[b] else idle(b) for b, g in enumerate(generators)])


def _guided_logits(model, x, attention_mask, is_prompt, mask_id, cfg_scale, kv_cache=None):
    """Model logits, with classifier-free guidance when cfg_scale > 0: run x and a copy whose prompt
    is fully masked, then logits = uncond + (cfg_scale + 1) (cond - uncond). With a cache, both
    copies' keys and values are recorded (the cache holds 2B rows)."""
    cache = {} if kv_cache is None else {"kv_cache": kv_cache}  # a plain call without one
    if cfg_scale <= 0:
        return model(x, attention_mask, **cache)
    unconditional = torch.where(is_prompt, mask_id, x)
    am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    cond, uncond = model(torch.cat([x, unconditional]), am, **cache).chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def _top_k_per_row(scores, k):
    """Boolean (B, T) selecting the k[b] highest scores of each row b (k varies per row)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (B, T)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.size(1), device=scores.device).expand_as(order))
    return rank < k[:, None]


# -----------------------------------------------------------------------------
# Likelihood: Monte Carlo estimate of the ELBO (LLaDA paper, Sec. 2.4 and Appendix B)


@torch.no_grad()
def log_likelihood(model, prompt, answer, mc_samples=128, batch_size=16, mask_id=None, generator=None):
    """Estimate a lower bound on log p(answer | prompt) for one (prompt, answer) pair (1-D tensors).

    Each Monte Carlo sample masks l of the L answer tokens (l stratified over the batch so every
    noise level is covered) and scores (L / l) * sum of log-probs of the masked tokens. Averaged
    over samples this estimates the ELBO, used e.g. to rank multiple-choice answers."""
    mask_id = model.config.mask_token_id if mask_id is None else mask_id
    if mc_samples % batch_size:
        raise ValueError(f"mc_samples={mc_samples} must be a multiple of batch_size={batch_size}")
    P, L = len(prompt), len(answer)
    seq = torch.cat([prompt, answer])[None].expand(batch_size, -1)  # (b, P + L)
    total = 0.0
    for _ in range(mc_samples // batch_size):
        # Stratified counts: a random offset, then evenly spaced over 1..L (as the reference does).
        start = torch.randint(1, L + 1, (), generator=generator).item()
        n_mask = torch.linspace(start, start + (batch_size - 1) * L / batch_size, batch_size).round().long()
        n_mask = (n_mask - 1) % L + 1  # (b,) in 1..L
        ranks = torch.rand(batch_size, L, generator=generator).argsort(dim=1)  # random order per row
        answer_masked = ranks < n_mask[:, None]  # (b, L): exactly n_mask[i] positions in row i
        is_masked = torch.cat([torch.zeros(batch_size, P, dtype=torch.bool), answer_masked], dim=1)
        is_masked = is_masked.to(seq.device)
        logits = model(torch.where(is_masked, mask_id, seq))  # (b, P + L, V)
        ce = masked_token_ce(logits, seq, is_masked)  # (b, P + L)
        total += (ce.sum(dim=1) * L / n_mask.to(ce.device)).sum().item()
    return -total / mc_samples
