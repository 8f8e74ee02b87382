"""estimators.py, line 8 three ways (--estimator=d1, coupled, elbo): masks that are a pure function of
(seed, step, j) cut from the whole step, a ratio of exactly 1 and the REINFORCE gradient at the first
inner update, each estimate against a hand-built one, the ELBO against diffusion.log_likelihood, a
2-step GRPO run with each estimator, and bad values refused."""
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import grpo
import train
from common import row_slices
from diffusion import EPS, log_likelihood, masked_token_ce
from estimators import ESTIMATORS, chunked_logps, completion_weights, estimate_logps, loss_logps, prompt_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grpo import SayO  # noqa: E402  (one fixed question, reward 1.0 for an answer with an "o")

MASK, EOS = 60, 61  # the small model's [MASK] and EOS ids (tests/conftest.py, SMALL)
CPU = torch.device("cpu")


def rollout(N=6, P=5, C=7, seed=0):
    """What the estimators read of eval.Completions: a left-padded prompt in row 0, an EOS mid-way in row 1."""
    g = torch.Generator().manual_seed(seed)
    attention = torch.ones(N, P, dtype=torch.long)
    attention[0, :2] = 0
    completion_ids = torch.randint(0, 50, (N, C), generator=g)
    completion_ids[1, 3] = EOS
    return SimpleNamespace(prompt_ids=torch.randint(0, 50, (N, P), generator=g), prompt_attention=attention,
                           completion_ids=completion_ids, reward=torch.rand(N, generator=g))


def masks_of(estimator, ro, seed=0, step=7, j=0, samples=2, rows=slice(None)):
    """(prompt mask, completion weights) of inner update j, drawn for ro's rows as train_grpo does."""
    (N, P), C = ro.prompt_ids.shape, ro.completion_ids.size(1)
    return (prompt_mask(seed, step, j, (N, P), 0.3, CPU)[rows],
            completion_weights(estimator, seed, step, j, (N, C), samples, CPU, rows))


def by_hand(estimator, model, ro, is_prompt_masked, weights):
    """Each estimator's (N, C) estimate, written out from its definition (estimators.py's docstring)."""
    P, ids = ro.prompt_ids.size(1), ro.completion_ids
    x0 = torch.cat([ro.prompt_ids, ids], 1)  # (N, P + C)
    attention = torch.cat([ro.prompt_attention, torch.ones_like(ids)], 1)

    def log_probs(is_completion_masked):  # one forward: log p(o_k | input) at every completion slot
        x = torch.cat([torch.where(is_prompt_masked, MASK, ro.prompt_ids),
                       torch.where(is_completion_masked, MASK, ids)], 1)
        return F.log_softmax(model(x, attention)[:, P:], -1).gather(-1, ids[..., None]).squeeze(-1)

    if estimator == "d1":  # one pass, all completion masked
        return log_probs(torch.ones_like(ids, dtype=torch.bool))
    if estimator == "coupled":  # a mask and its complement; each token read where it is masked
        first = weights[0] > 0
        return torch.where(first, log_probs(first), log_probs(~first))
    elbo = 0.0  # LLaDA's loss arithmetic per pass, negated: -CE / (K p_s) on the masked completion tokens
    for w in weights:
        is_masked = torch.cat([is_prompt_masked, w > 0], 1)  # (N, P + C)
        scored = torch.cat([torch.zeros_like(is_prompt_masked), w > 0], 1)  # the completion's masked tokens
        ce = masked_token_ce(model(torch.where(is_masked, MASK, x0), attention), x0, scored)[:, P:]  # (N, C)
        elbo = elbo - ce * w.amax(dim=1, keepdim=True)  # w = 1 / (K p_s) on every token pass s masks
    return elbo


# -- the masks: a pure function of (seed, step, j), cut from the whole step ----------------------------


@pytest.mark.parametrize("estimator", ["coupled", "elbo"])
def test_completion_masks_are_a_pure_function_of_seed_step_and_update(estimator):
    def draw(seed=1, step=2, j=3, rows=slice(None)):
        return completion_weights(estimator, seed, step, j, (12, 9), 3, CPU, rows)

    state = torch.get_rng_state()
    a = draw()
    assert torch.equal(torch.get_rng_state(), state)  # a generator of its own, never torch's global one
    assert torch.equal(a, draw())
    for other in (dict(seed=2), dict(step=3), dict(j=4)):
        assert not torch.equal(a > 0, draw(**other) > 0), other
    assert torch.equal(draw(rows=slice(4, 8)), a[:, 4:8])  # a process's rows: those rows of the whole step's draw
    assert completion_weights("d1", 1, 2, 3, (12, 9), 3, CPU) is None  # d1 draws nothing


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_a_rows_estimate_does_not_depend_on_how_the_step_is_split(tiny_model, estimator):
    model, ro = tiny_model(), rollout(N=8)
    is_prompt_masked, weights = masks_of(estimator, ro)
    whole = chunked_logps(model, ro, is_prompt_masked, MASK, 4, weights)  # one process: the whole step
    for share in (slice(0, 4), slice(4, 8)):  # two processes, each with its rows of the step
        mine = SimpleNamespace(**{k: v[share] for k, v in vars(ro).items()})
        is_prompt_masked, weights = masks_of(estimator, ro, rows=share)
        torch.testing.assert_close(chunked_logps(model, mine, is_prompt_masked, MASK, 4, weights), whole[share])


# -- the first inner update: ratio exactly 1, gradient = REINFORCE on the estimate --------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_first_inner_update_sees_the_same_masks_and_a_ratio_of_exactly_one(tiny_model, estimator):
    model, ro = tiny_model(), rollout()
    is_prompt_masked, weights = masks_of(estimator, ro, j=2)
    old = chunked_logps(model, ro, is_prompt_masked, MASK, 4, weights)  # pi_old, no gradients
    current = torch.cat([estimate_logps(model, ro, is_prompt_masked, MASK, rows, weights)
                         for rows in row_slices(6, 4)])  # pi_theta, as policy_update runs it
    assert current.requires_grad and torch.equal(current.detach(), old)

    cfg = grpo.GRPOConfig(estimator=estimator, logp_chunk=4, epsilon=0.2, beta=0.04, dtype="float32")
    advantages, loss_mask = grpo.group_advantages(ro.reward, 2), grpo.completion_mask(ro.completion_ids, EOS)
    sums = grpo.policy_update(model, torch.optim.SGD(model.parameters(), lr=0.0), ro, is_prompt_masked, old, old,
                              advantages, loss_mask, cfg, CPU, weights=weights)
    assert sums["clipped"] == 0 and sums["kl"] == 0  # rho = 1 and pi_ref = pi_theta on every token
    assert sums["loss"] == pytest.approx(-(advantages[:, None] * loss_mask).sum().item() / loss_mask.sum().item(),
                                         abs=1e-6)  # the surrogate's value at rho = 1: -A


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradient_at_ratio_one_is_reinforce_on_the_estimated_log_likelihood(tiny_model, estimator):
    """beta = 0, first update: grad loss = -(1/n_tokens) sum_i A_i grad log pi(o_i | q), with log pi the
    estimate (d1, coupled: the sum of the token log-probs; elbo: the ELBO), built by hand."""
    model, ro = tiny_model(), rollout()
    advantages, loss_mask = grpo.group_advantages(ro.reward, 2), grpo.completion_mask(ro.completion_ids, EOS)
    n_tokens = loss_mask.sum()
    is_prompt_masked, weights = masks_of(estimator, ro)
    old = chunked_logps(model, ro, is_prompt_masked, MASK, 4, weights)
    logp = estimate_logps(model, ro, is_prompt_masked, MASK, weights=weights)
    logp, old, _ = loss_logps(estimator, loss_mask, logp, old, old)  # as policy_update feeds grpo_loss
    loss, _ = grpo.grpo_loss(logp, old, old, advantages, loss_mask, eps=0.2, beta=0.0, n_tokens=n_tokens)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    log_pi = (by_hand(estimator, model, ro, is_prompt_masked, weights) * loss_mask).sum(1)  # (N,)
    (-(advantages * log_pi).sum() / n_tokens).backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


# -- each estimator against its definition ----------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_each_estimate_equals_its_hand_built_computation(tiny_model, estimator):
    model, ro = tiny_model(seed=1), rollout(N=5)
    is_prompt_masked, weights = masks_of(estimator, ro, step=3, j=1, samples=3)
    torch.testing.assert_close(chunked_logps(model, ro, is_prompt_masked, MASK, 2, weights),
                               by_hand(estimator, model, ro, is_prompt_masked, weights).detach())


def test_coupled_masks_every_completion_token_in_exactly_one_of_two_passes(tiny_model, record_inputs):
    model, ro = tiny_model(), rollout(N=8, P=5, C=7)
    is_prompt_masked, weights = masks_of("coupled", ro)
    assert weights.shape == (2, 8, 7) and set(weights.unique().tolist()) <= {0.0, 1.0}
    assert ((weights > 0).sum(0) == 1).all()
    with record_inputs(model) as seen:
        chunked_logps(model, ro, is_prompt_masked, MASK, 4, weights)
    assert len(seen) == 4  # 2 chunks x 2 passes
    for first, second, rows in ((seen[0], seen[1], slice(0, 4)), (seen[2], seen[3], slice(4, 8))):
        assert torch.equal(first[:, 5:] == MASK, weights[0, rows] > 0)
        assert torch.equal(second[:, 5:] == MASK, ~(weights[0, rows] > 0))  # the complement
        for x in (first, second):
            assert torch.equal(x[:, :5] == MASK, is_prompt_masked[rows])  # d1's prompt mask in both passes
    levels = (completion_weights("coupled", 0, 0, 0, (2000, 50), 2, CPU)[0] > 0).float().mean(1)  # (rows,)
    assert abs(levels.mean().item() - 0.5) < 0.03 and levels.min() < 0.05 and levels.max() > 0.95  # t ~ U(0, 1)


def test_elbo_draws_k_passes_at_stratified_noise_levels_weighted_by_one_over_k_p():
    K, N, C = 3, 64, 400
    weights = completion_weights("elbo", 5, 1, 0, (N, C), K, CPU)
    assert weights.shape == (K, N, C)
    for s, w in enumerate(weights):
        masked = w > 0
        inv = w.amax(dim=1)  # (N,) 1 / (K p) of this pass, row by row
        assert torch.equal(w, masked * inv[:, None])  # one weight per pass and row, on its masked tokens
        live = masked.any(dim=1)
        p = 1 / (K * inv[live])  # (rows with a masked token,)
        assert ((p >= (1 - EPS) * s / K + EPS - 1e-6) & (p <= (1 - EPS) * (s + 1) / K + EPS + 1e-6)).all()  # stratum s
        rate = masked[live].float().mean(dim=1)
        assert ((rate - p).abs() <= 4 * (p * (1 - p) / C).sqrt() + 1 / C).all()  # each token masked w.p. p


def test_elbo_averaged_over_many_masks_approaches_llada_log_likelihood(tiny_model):
    """diffusion.log_likelihood (LLaDA's Monte Carlo ELBO, exact mask counts) and the elbo estimator
    (Bernoulli masks at stratified levels) estimate the same bound: 1,024 and 4,096 passes agree."""
    model, g = tiny_model(seed=3), torch.Generator().manual_seed(0)
    prompt, answer = torch.randint(0, 50, (5,), generator=g), torch.randint(0, 50, (6,), generator=g)
    n = 2048  # rows, 2 passes each
    ro = SimpleNamespace(prompt_ids=prompt.expand(n, -1), prompt_attention=torch.ones(n, 5, dtype=torch.long),
                         completion_ids=answer.expand(n, -1))
    weights = completion_weights("elbo", 0, 0, 0, (n, 6), 2, CPU)
    elbo = chunked_logps(model, ro, torch.zeros(n, 5, dtype=torch.bool), MASK, 1024, weights).sum(1)  # (n,)
    llada = log_likelihood(model, prompt, answer, mc_samples=1024, batch_size=64, mask_id=MASK,
                           generator=torch.Generator().manual_seed(1))
    tolerance = 5 * elbo.std().item() / math.sqrt(n) + 0.02 * abs(llada)  # 5 standard errors, and 2% for LLaDA's
    assert abs(elbo.mean().item() - llada) < tolerance, (elbo.mean().item(), llada)


def test_the_elbo_enters_the_loss_as_one_clipped_ratio_per_sequence():
    """grpo_loss on loss_logps("elbo", ...) = sum_i L_i (surrogate_i + beta k3_i) / n_tokens with ESPO's
    rho_i = exp((ELBO_i - ELBO_old_i) / L_i) and k3 of (ELBO_ref_i - ELBO_i) / L_i; d1 and coupled pass as they are."""
    g = torch.Generator().manual_seed(4)
    terms = (torch.rand(3, 5, generator=g) * -4).requires_grad_(True)  # the ELBO's per-token terms
    old, ref = terms.detach() + torch.randn(3, 5, generator=g), terms.detach() + torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1.0] * 5, [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    A, eps, beta = torch.tensor([0.7, -0.4, 0.2]), 0.2, 0.04
    loss, stats = grpo.grpo_loss(*loss_logps("elbo", mask, terms, old, ref), A, mask, eps, beta, n_tokens=mask.sum())

    L = mask.sum(1)  # (3,)
    elbo, elbo_old, elbo_ref = ((x * mask).sum(1) for x in (terms, old, ref))  # (3,) each
    rho = torch.exp((elbo - elbo_old) / L)
    surrogate = -torch.min(rho * A, rho.clamp(1 - eps, 1 + eps) * A)
    delta = (elbo_ref - elbo) / L
    kl = delta.exp() - delta - 1
    torch.testing.assert_close(loss, (L * (surrogate + beta * kl)).sum() / mask.sum())
    torch.testing.assert_close(torch.tensor(stats["kl"]), (L * kl).sum().detach())
    assert stats["clipped"] in {0.0, 2.0, 3.0, 5.0, 7.0, 8.0, 10.0}  # whole rows (5, 2, 3 tokens) are clipped
    example = loss_logps("elbo", torch.tensor([[1.0, 1, 1, 0]]), torch.tensor([[-9.0, -3, -6, 0]]))[0]
    assert torch.equal(example, torch.full((1, 4), -6.0))  # the docstring's example
    for estimator in ("d1", "coupled"):
        assert all(a is b for a, b in zip(loss_logps(estimator, mask, terms, old, ref), (terms, old, ref)))


# -- end to end, and bad values ----------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_two_grpo_steps_run_with_each_estimator(estimator, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(grpo, "get_tiny_tasks", lambda names: [SayO()])
    cfg = grpo.GRPOConfig(init=str(tiny_checkpoint("init.pt")), out_dir=str(tmp_path / "grpo"), steps=2,
                          questions_per_step=2, group_size=4, gen_length=8, block_length=8, diffusion_steps=4,
                          temperature=1.0, mu=2, logp_chunk=3, lr=1e-2, warmup_steps=0, dtype="float32",
                          sample_every=0, estimator=estimator, elbo_samples=3)
    grpo.train_grpo(cfg)
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(row[key]) for key in ("loss", "kl", "clip_ratio", "reward")), row
    assert rows[1]["kl"] > 0  # the first step moved the policy away from the reference


@pytest.mark.parametrize("arg, message", [("--estimator=foo", "--estimator='foo': expected one of d1, coupled, elbo"),
                                          ("--elbo_samples=0", "--elbo_samples=0: must be at least 1")])
def test_bad_estimator_values_are_refused_in_one_line_naming_the_key(arg, message, user_error, tiny_checkpoint):
    argv = ["--stage", "grpo", f"--init={tiny_checkpoint('init.pt')}", arg]
    assert user_error(train.main, argv, "train.py") == message
