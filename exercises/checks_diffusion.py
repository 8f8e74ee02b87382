"""
Checks of exercises 04-09 (diffusion.py): the forward process, the masked-diffusion loss (pretraining
and SFT), and the sampler's pieces (commit plan, top-k per row, Gumbel-max noise). Random draws are
replayed: the student's function gets a generator seeded like the project's, so both see the same noise.
"""

import torch
import torch.nn.functional as F

import diffusion as ref
from .check import Call, Seeded, attempt, expect, require, small_model

MASK, EOS = 60, 61  # small_model's [MASK] and EOS ids


# -----------------------------------------------------------------------------
# 04 forward process


def check_forward_process(s):
    """forward_process(x0, mask_id, eps, generator) on 4,000 rows of 64 tokens: p is (B, 1), one level
    per row, spread over [eps, 1]; xt is x0 with exactly the is_masked slots set to mask_id; each row
    is masked at its own rate p. Then, on small inputs and eps 1e-3 and 0.5, the exact values of
    diffusion.forward_process with the same generator (t drawn first, then the (B, T) uniforms)."""
    x0 = torch.randint(0, 50, (4000, 64), generator=torch.Generator().manual_seed(0))
    call = Call(ref.forward_process, x0, 99, generator=Seeded(0))
    got = call.run(s.forward_process)
    require(isinstance(got, tuple) and len(got) == 3, "forward_process returns three values: xt, is_masked, p", call)
    xt, is_masked, p = got
    require(isinstance(p, torch.Tensor) and p.shape == (4000, 1), f"p must have shape (B, 1) = (4000, 1), one "
            f"noise level per row (it broadcasts against (B, T)); got {getattr(p, 'shape', p)}", call)
    require(p.min() >= ref.EPS - 1e-6 and p.max() <= 1 + 1e-6, "p = (1 - eps) t + eps lies in [eps, 1]", call)
    require(p.std() > 0.2, "every row got (nearly) the same p: draw one t ~ U(0, 1) per row, shape (B, 1)", call)
    require(isinstance(is_masked, torch.Tensor) and is_masked.dtype == torch.bool and is_masked.shape == x0.shape,
            "is_masked must be a bool tensor of x0's shape (B, T)", call)
    require(torch.equal(xt, torch.where(is_masked, 99, x0)), "xt must be x0 with exactly the is_masked "
            "positions replaced by mask_id (and every other token unchanged)", call)
    rate = is_masked.float().mean(1, keepdim=True)  # (B, 1)
    require((rate - p).abs().mean() < 0.05, f"a row must be masked at its own rate p; the mean gap between a "
            f"row's share of masked tokens and its p is {(rate - p).abs().mean():.2f}", call,
            hint="is_masked = torch.rand(B, T) < p (each token independently, probability p)")
    small = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    for eps in (ref.EPS, 0.5):
        call = Call(ref.forward_process, small, 99, eps=eps, generator=Seeded(1))
        expect(call, call.run(ref.forward_process), call.run(s.forward_process), what=("xt", "is_masked", "p"),
               hint="draw t = torch.rand(B, 1, generator=generator) first, then "
                    "torch.rand(B, T, generator=generator), on x0's device")


# -----------------------------------------------------------------------------
# 05, 06 the masked-diffusion loss


def check_pretrain_loss(s):
    """diffusion_loss(model, x0, prompt_lengths, mask_id, generator) with every prompt length 0, on a
    small random model and 3 batches, equals diffusion.diffusion_loss with the same generator (one
    forward_process call draws the noise): sum(CE / p) over the masked tokens divided by ALL B * T
    slots; the loss is a scalar tensor with a gradient."""
    _check_loss(s, [torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long)])


def check_sft_loss(s):
    """diffusion_loss on rows of 16 tokens with prompt lengths 0, 3 and 9 and EOS padding equals
    diffusion.diffusion_loss with the same generator: the model sees every prompt token clean, only
    answer and EOS-padding tokens are masked and scored, each row is divided by its answer length
    T - P; and the pretraining case (every prompt length 0) still holds."""
    lengths = [torch.tensor([0, 3, 9]), torch.tensor([5, 5]), torch.zeros(2, dtype=torch.long)]
    model = small_model(3)
    _check_loss(s, lengths, model)
    x0, P = _rows(torch.tensor([4, 7, 9]), seed=11)
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        call = Call(ref.diffusion_loss, model, x0, P, MASK, generator=Seeded(11))
        call.run(s.diffusion_loss)
    finally:
        hook.remove()
    require(len(seen) == 1, f"diffusion_loss must run the model exactly once; it ran it {len(seen)} times", call)
    is_prompt = torch.arange(16)[None, :] < P[:, None]
    require(torch.equal(seen[0][is_prompt], x0[is_prompt]), "the model saw [MASK] inside a prompt: the prompt is "
            "the condition and must stay clean", call, hint="xt = torch.where(is_prompt, x0, xt)")
    # rows=: a micro-batch's share. The parts of a batch add up to the whole batch's loss.
    call = Call(ref.diffusion_loss, model, x0, P, MASK, generator=Seeded(11), rows=slice(1, 3))
    expect(call, call.run(ref.diffusion_loss), call.run(s.diffusion_loss),
           hint="draw the whole batch's noise first, then keep x0[rows], xt[rows], ... and divide the rows' "
                "sum by the whole batch's B")


def _rows(prompt_lengths, seed, T=16):
    """x0 (B, T): prompt and answer tokens below 50, then 1-4 EOS of padding at the end of each row."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 50, (len(prompt_lengths), T), generator=g)
    for row, pad in enumerate(torch.randint(1, 5, (len(prompt_lengths),), generator=g).tolist()):
        x0[row, T - pad:] = EOS
    return x0, prompt_lengths


def _check_loss(s, prompt_lengths, model=None):
    model = model or small_model(3)
    for seed, P in enumerate(prompt_lengths):
        x0, P = _rows(P, seed)
        call = Call(ref.diffusion_loss, model, x0, P, MASK, generator=Seeded(seed))
        got = call.run(s.diffusion_loss)
        require(isinstance(got, torch.Tensor) and got.dim() == 0 and got.requires_grad, "the loss must be a "
                "scalar tensor with a gradient (no .item(), no torch.no_grad())", call)
        expect(call, call.run(ref.diffusion_loss), got, mistakes=_loss_mistakes(model, x0, P, seed),
               hint="call forward_process(x0, mask_id, generator=generator) once, before the model, so the "
                    "check replays your noise; then restore the prompt and score only masked answer tokens")


def _loss_mistakes(model, x0, prompt_lengths, seed):
    """The losses that common mistakes give, with the same noise as the project's."""
    B, T = x0.shape
    is_prompt = torch.arange(T)[None, :] < prompt_lengths[:, None]  # (B, T)
    xt, is_masked, p = ref.forward_process(x0, MASK, generator=torch.Generator().manual_seed(seed))
    clean_prompt = torch.where(is_prompt, x0, xt)
    answer = is_masked & ~is_prompt
    lengths = (T - prompt_lengths).clamp(min=1).float()

    def loss(inputs, scored, per_row, weight=p):
        with torch.no_grad():
            ce = ref.masked_token_ce(model(inputs), x0, scored)  # (B, T)
        return ((ce / weight).sum(1) / per_row).mean()

    return {
        "divided by the number of masked tokens instead of all the slots (B * T, or the answer lengths)":
            loss(clean_prompt, answer, 1.0) * B / answer.sum().clamp(min=1),
        "left out the 1/p weight": loss(clean_prompt, answer, lengths, weight=1.0),
        "noised the prompt: the model must see it clean (put x0 back at the prompt positions)":
            loss(xt, answer, lengths),
        "scored the masked prompt tokens too: only answer tokens enter the loss":
            loss(clean_prompt, is_masked, lengths),
        "divided every row by T instead of its answer length T - P": loss(clean_prompt, answer, float(T)),
        "left the EOS padding out of the loss: it is scored, which is how the model learns where to stop":
            loss(clean_prompt, answer & (x0 != EOS), lengths),
    }


# -----------------------------------------------------------------------------
# 07 commit plan, 08 top-k per row


def check_commit_plan(s):
    """commit_plan(n_masked, steps) for n_masked = 0..40 and steps = 1..8: an integer (B, steps)
    tensor whose rows sum to n_masked, each entry floor(n / steps) or one more, the extra tokens in
    the first steps; equal to diffusion.commit_plan."""
    n = torch.arange(41)
    for steps in range(1, 9):
        call = Call(ref.commit_plan, n, steps)
        got = call.run(s.commit_plan)
        if isinstance(got, torch.Tensor) and got.shape == (41, steps):
            bad = (got.sum(1) != n).nonzero()
            require(len(bad) == 0, lambda: _plan_sum_problem(bad[0].item(), got, steps), call)
        base, extra = n[:, None] // steps, n[:, None] % steps
        first = torch.arange(steps)[None, :]
        expect(call, call.run(ref.commit_plan), got, mistakes={
            "gave the extra tokens to the LAST steps: the first `n % steps` steps commit one more":
                base + (first >= steps - extra).long(),
            "used <= where < belongs (an off-by-one: one extra token too many)": base + (first <= extra).long(),
            "dropped the remainder n % steps": base.expand(-1, steps),
        }, hint="row i of the plan is for n_masked = i")


def _plan_sum_problem(n, got, steps):
    return (f"the plan for n_masked={n} over {steps} steps is {got[n].tolist()}, which sums to "
            f"{got[n].sum().item()}, not {n}: every masked token of a block must be committed by its last step")


def check_top_k(s):
    """_top_k_per_row(scores, k) on (4, 10) scores with -inf entries (as the sampler passes) and k from
    0 to 10, different per row: row b selects exactly k[b] positions, every selected score >= every
    unselected one; also with ties; on scores without ties it equals diffusion._top_k_per_row."""
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(4, 10, generator=g)
    scores[0, 6:] = -torch.inf
    scores[2, :3] = -torch.inf
    ties = torch.tensor([[0.5, 0.2, 0.5, 0.5, 0.1, 0.2, 0.9, 0.5, 0.0, 0.5]] * 4)
    for x, k in ((scores, torch.tensor([3, 0, 7, 10])), (ties, torch.tensor([2, 4, 5, 1]))):
        call = Call(ref._top_k_per_row, x, k)
        got = call.run(s._top_k_per_row)
        require(isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.shape == x.shape,
                f"the result is a bool tensor of the scores' shape {tuple(x.shape)}, True at the chosen "
                "positions", call)
        for b in range(x.size(0)):
            picked, rest = x[b][got[b]], x[b][~got[b]]
            require(int(got[b].sum()) == k[b], f"row {b} must select k[{b}] = {k[b].item()} positions; it selects "
                    f"{int(got[b].sum())}", call, hint="each row has its own k: compare a per-row rank with k[:, None]")
            require(len(picked) == 0 or len(rest) == 0 or picked.min() >= rest.max(), lambda: f"row {b} selects a "
                    f"score of {picked.min().item():.3g} but leaves out {rest.max().item():.3g}: pick the HIGHEST "
                    "scores", call)
    call = Call(ref._top_k_per_row, scores, torch.tensor([3, 0, 7, 10]))
    expect(call, call.run(ref._top_k_per_row), call.run(s._top_k_per_row))


# -----------------------------------------------------------------------------
# 09 Gumbel-max noise


def check_gumbel(s):
    """add_gumbel_noise(logits, temperature, generator): temperature 0 returns the logits unchanged;
    otherwise a float64 tensor whose argmax over 20,000 draws picks each token with frequency
    softmax(logits / temperature) (at temperature 0.5, 1 and 2, within 0.02), equal to
    diffusion.add_gumbel_noise with the same generator, also for logits near 100 (exp overflows float32)."""
    logits = torch.tensor([[1.0, 0.5, 0.0, -1.0]]).expand(20000, 4)
    call = Call(ref.add_gumbel_noise, logits[:2], 0.0, generator=Seeded(0))
    expect(call, logits[:2], call.run(s.add_gumbel_noise), exact_dtype=True, atol=0, rtol=0,
           hint="temperature 0 means greedy decoding: return the logits as they are")
    for temperature in (0.5, 1.0, 2.0):
        call = Call(ref.add_gumbel_noise, logits, temperature, generator=Seeded(0))
        got = call.run(s.add_gumbel_noise)
        require(isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.shape == logits.shape,
                f"the result must be a float64 tensor of the logits' shape; got {getattr(got, 'dtype', type(got))}",
                call, hint="logits.to(torch.float64) and torch.rand(..., dtype=torch.float64): low precision here "
                           "makes sampling biased (LLaDA, Appendix B)")
        freq = torch.bincount(got.argmax(-1), minlength=4).double() / len(got)
        want = torch.softmax(logits[0].double() / temperature, -1)
        require((freq - want).abs().max() < 0.02, f"at temperature {temperature} the argmax picks the tokens with "
                f"frequencies {[round(f, 3) for f in freq.tolist()]}, but softmax(logits / {temperature}) is "
                f"{[round(w, 3) for w in want.tolist()]}", call,
                hint="exp(logits) / (-log u) ** temperature, u ~ U(0, 1): the noise is raised to the power temperature")
    g = torch.Generator().manual_seed(5)
    for x, temperature in ((torch.randn(3, 6, generator=g) * 3, 0.7), (100 + torch.randn(3, 6, generator=g), 1.0)):
        call = Call(ref.add_gumbel_noise, x, temperature, generator=Seeded(3))
        expect(call, call.run(ref.add_gumbel_noise), call.run(s.add_gumbel_noise), exact_dtype=True, atol=0,
               rtol=1e-9, mistakes=_additive_gumbel(x, temperature, seed=3),
               hint="cast to float64 BEFORE exp (exp(100) is inf in float32), then draw "
                    "u = torch.rand(logits.shape, dtype=torch.float64, generator=generator)")


def _additive_gumbel(logits, temperature, seed):
    u = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return {"used the additive form logits / T - log(-log u): the same argmax, so a correct sampler, but this "
            "exercise computes LLaDA's exp(logits) / (-log u) ** T": logits.double() / temperature - (-u.log()).log()}
