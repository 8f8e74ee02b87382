"""grpo.py: advantages, the REINFORCE gradient, clipping, KL, the one-step estimator's masks."""
import torch
import torch.nn.functional as F

import grpo
from model import Config, Model

MASK = 60


def tiny_model(seed=0):
    cfg = Config(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, mlp_hidden_size=64, vocab_size=64,
                 embedding_size=64, max_sequence_length=64, mask_token_id=MASK, eos_token_id=61, pad_token_id=61)
    return Model(cfg).init_weights(seed=seed)


def fake_rollout(N=6, P=5, C=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(0, 50, (N, P), generator=g)
    attention = torch.ones(N, P, dtype=torch.long)
    attention[0, :2] = 0  # one left-padded prompt
    completion_ids = torch.randint(0, 50, (N, C), generator=g)
    completion_ids[1, 3] = 61  # an EOS mid-completion
    rewards = torch.rand(N, generator=g)
    return grpo.Rollout(prompt_ids, attention, completion_ids, grpo.completion_mask(completion_ids, 61), [""] * N,
                        rewards, {"r": rewards}, rewards, grpo.group_advantages(rewards, 2))


def test_advantages_have_zero_mean_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 0.0, 0.5, 0.2])
    for scale in (False, True):
        a = grpo.group_advantages(rewards, 6, scale_by_std=scale).view(2, 6)
        assert torch.allclose(a.mean(1), torch.zeros(2), atol=1e-6)
    a = grpo.group_advantages(rewards, 3).view(4, 3)
    assert torch.equal(a[2], torch.zeros(3))  # all-equal group: zero advantage
    torch.testing.assert_close(a[0], torch.tensor([2 / 3, -1 / 3, -1 / 3]))


def test_completion_mask_counts_up_to_and_including_first_eos():
    ids = torch.tensor([[5, 61, 61, 61], [5, 6, 7, 8], [61, 61, 3, 61]])
    assert grpo.completion_mask(ids, 61).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_left_pad():
    ids, att = grpo.left_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and att.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_mu1_beta0_gradient_is_reinforce_with_group_baseline():
    """ratio = 1 at the first update: grad = -(1/n_tokens) sum_i A_i sum_k grad log p(o_ik)."""
    model, ro = tiny_model(), fake_rollout()
    is_masked = grpo.prompt_mask(0, 7, ro.prompt_ids.shape, 0.15, "cpu")
    old = grpo.chunked_logps(model, ro, is_masked, MASK, chunk_size=4)
    n_tokens = ro.completion_mask.sum()
    logp = grpo.sequence_logps(model, ro, is_masked, MASK)
    loss, _ = grpo.grpo_loss(logp, old, old, ro.advantages, ro.completion_mask, eps=0.2, beta=0.0, n_tokens=n_tokens)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # by hand: build the masked input, one forward pass, log-softmax, REINFORCE objective
    x = torch.cat([torch.where(is_masked, MASK, ro.prompt_ids), torch.full_like(ro.completion_ids, MASK)], 1)
    att = torch.cat([ro.prompt_attention, torch.ones_like(ro.completion_ids)], 1)
    logits = model(x, att)[:, 5:]
    token_logp = F.log_softmax(logits, -1).gather(-1, ro.completion_ids[..., None]).squeeze(-1)
    reinforce = -(ro.advantages[:, None] * token_logp * ro.completion_mask).sum() / n_tokens
    reinforce.backward()
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


def test_clip_acts_only_outside_range_and_only_in_the_advantage_direction():
    eps = 0.2
    cases = {  # (log-ratio, advantage) -> gradient expected to be zero?
        (0.0, 1.0): False, (0.1, 1.0): False, (0.1, -1.0): False,   # inside [1 - eps, 1 + eps]
        (0.5, 1.0): True,    # ratio 1.65 > 1.2 with A > 0: already pushed up enough, clipped
        (0.5, -1.0): False,  # ratio > 1.2 with A < 0: the clip must not stop the correction
        (-0.5, -1.0): True,  # ratio 0.61 < 0.8 with A < 0: pushed down enough, clipped
        (-0.5, 1.0): False,  # ratio < 0.8 with A > 0: keep pushing up
    }
    for (log_ratio, adv), zero in cases.items():
        logp = torch.tensor([[log_ratio]], requires_grad=True)
        loss, stats = grpo.grpo_loss(logp, torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([adv]),
                                     torch.ones(1, 1), eps=eps, beta=0.0, n_tokens=1)
        loss.backward()
        assert (logp.grad.abs().item() == 0) == zero, (log_ratio, adv)
        assert stats["clipped"] == (1.0 if zero else 0.0)


def test_kl_is_zero_when_policy_equals_reference_and_positive_otherwise():
    logp = torch.log_softmax(torch.randn(4, 6), -1)
    mask = torch.ones(4, 6)
    zero_adv = torch.zeros(4)
    loss, stats = grpo.grpo_loss(logp, logp, logp, zero_adv, mask, eps=0.5, beta=0.04, n_tokens=24)
    assert stats["kl"] == 0 and loss.item() == 0
    _, stats = grpo.grpo_loss(logp, logp, logp + 0.3 * torch.randn(4, 6), zero_adv, mask, 0.5, 0.04, 24)
    assert stats["kl"] > 0


def test_estimator_masks_every_completion_slot_and_prompt_at_rate_p():
    ro = fake_rollout(N=64, P=50, C=7)
    seen = []
    model = tiny_model()
    forward = model.forward
    model.forward = lambda x, attention_mask=None: seen.append(x.clone()) or forward(x, attention_mask)
    is_masked = grpo.prompt_mask(3, 11, ro.prompt_ids.shape, 0.15, "cpu")
    grpo.chunked_logps(model, ro, is_masked, MASK, chunk_size=16)
    x = torch.cat(seen)
    assert len(seen) == 4  # 64 rows in chunks of 16
    assert (x[:, 50:] == MASK).all()  # every completion position
    prompt_rate = (x[:, :50] == MASK).float().mean().item()
    assert abs(prompt_rate - 0.15) < 0.02
    assert torch.equal(x[:, :50] == MASK, is_masked)


def test_same_inner_step_gives_same_mask_and_different_steps_differ():
    a = grpo.prompt_mask(2, 5, (8, 40), 0.15, "cpu")
    assert torch.equal(a, grpo.prompt_mask(2, 5, (8, 40), 0.15, "cpu"))
    assert not torch.equal(a, grpo.prompt_mask(3, 5, (8, 40), 0.15, "cpu"))
    assert not torch.equal(a, grpo.prompt_mask(2, 6, (8, 40), 0.15, "cpu"))


def test_chunked_logps_equal_one_big_pass():
    model, ro = tiny_model(), fake_rollout(N=10)
    is_masked = grpo.prompt_mask(0, 1, ro.prompt_ids.shape, 0.15, "cpu")
    with torch.no_grad():
        whole = grpo.sequence_logps(model, ro, is_masked, MASK)
    torch.testing.assert_close(grpo.chunked_logps(model, ro, is_masked, MASK, chunk_size=4), whole)
