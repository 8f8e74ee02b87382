"""grpo.py: advantages, the REINFORCE gradient, clipping, KL, the one-step estimator's masks, the
rollouts (eval.complete with the RL prompt), and a few GRPO steps that raise a question's reward."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import estimators
import grpo
from checkpoint import load_model
from common import ConfigError
from estimators import sequence_logps
from eval import HERE, Completions, complete
from tasks import Task
from tasks_tiny import TINY_TASKS
from tokenizer import Tokenizer, chat_prompt

MASK, EOS = 60, 61  # the small model's [MASK] and EOS ids (tests/conftest.py, SMALL)


def fake_rollout(N=6, P=5, C=7, seed=0):
    """Completions as eval.complete returns them, with random ids (one left-padded prompt, one EOS mid-way)."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(0, 50, (N, P), generator=g)
    attention = torch.ones(N, P, dtype=torch.long)
    attention[0, :2] = 0  # one left-padded prompt
    completion_ids = torch.randint(0, 50, (N, C), generator=g)
    completion_ids[1, 3] = EOS  # an EOS mid-completion
    rewards = torch.rand(N, generator=g)
    return Completions(prompt_ids, attention, completion_ids, [""] * N, {"r": rewards}, rewards, rewards,
                       torch.ones(N, dtype=torch.bool))


def test_advantages_have_zero_mean_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 0.0, 0.5, 0.2])
    for scale in (False, True):
        a = grpo.group_advantages(rewards, 6, scale_by_std=scale).view(2, 6)
        assert torch.allclose(a.mean(1), torch.zeros(2), atol=1e-6)
    a = grpo.group_advantages(rewards, 3).view(4, 3)
    assert torch.equal(a[2], torch.zeros(3))  # all-equal group: zero advantage
    torch.testing.assert_close(a[0], torch.tensor([2 / 3, -1 / 3, -1 / 3]))


def test_completion_mask_counts_up_to_and_including_first_eos():
    ids = torch.tensor([[5, EOS, EOS, EOS], [5, 6, 7, 8], [EOS, EOS, 3, EOS]])
    assert grpo.completion_mask(ids, EOS).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_mu1_beta0_gradient_is_reinforce_with_group_baseline(tiny_model):
    """ratio = 1 at the first update: grad = -(1/n_tokens) sum_i A_i sum_k grad log p(o_ik)."""
    model, ro = tiny_model(), fake_rollout()
    advantages, loss_mask = grpo.group_advantages(ro.reward, 2), grpo.completion_mask(ro.completion_ids, EOS)
    is_masked = estimators.prompt_mask(0, 7, 0, ro.prompt_ids.shape, 0.15, "cpu")
    old = estimators.chunked_logps(model, ro, is_masked, MASK, chunk_size=4)
    n_tokens = loss_mask.sum()
    logp = sequence_logps(model, ro, is_masked, MASK)
    loss, _ = grpo.grpo_loss(logp, old, old, advantages, loss_mask, eps=0.2, beta=0.0, n_tokens=n_tokens)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # by hand: build the masked input, one forward pass, log-softmax, REINFORCE objective
    x = torch.cat([torch.where(is_masked, MASK, ro.prompt_ids), torch.full_like(ro.completion_ids, MASK)], 1)
    att = torch.cat([ro.prompt_attention, torch.ones_like(ro.completion_ids)], 1)
    logits = model(x, att)[:, 5:]
    token_logp = F.log_softmax(logits, -1).gather(-1, ro.completion_ids[..., None]).squeeze(-1)
    reinforce = -(advantages[:, None] * token_logp * loss_mask).sum() / n_tokens
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


def test_estimator_masks_every_completion_slot_and_prompt_at_rate_p(tiny_model, record_inputs):
    ro = fake_rollout(N=64, P=50, C=7)
    model = tiny_model()
    is_masked = estimators.prompt_mask(3, 11, 0, ro.prompt_ids.shape, 0.15, "cpu")
    with record_inputs(model) as seen:
        estimators.chunked_logps(model, ro, is_masked, MASK, chunk_size=16)
    x = torch.cat(seen)
    assert len(seen) == 4  # 64 rows in chunks of 16
    assert (x[:, 50:] == MASK).all()  # every completion position
    prompt_rate = (x[:, :50] == MASK).float().mean().item()
    assert abs(prompt_rate - 0.15) < 0.02
    assert torch.equal(x[:, :50] == MASK, is_masked)


def test_prompt_mask_is_a_pure_function_of_seed_step_and_inner_update():
    a = estimators.prompt_mask(5, 1, 2, (8, 40), 0.15, "cpu")
    assert torch.equal(a, estimators.prompt_mask(5, 1, 2, (8, 40), 0.15, "cpu"))
    assert not torch.equal(a, estimators.prompt_mask(5, 1, 3, (8, 40), 0.15, "cpu"))  # another inner update
    assert not torch.equal(a, estimators.prompt_mask(5, 2, 2, (8, 40), 0.15, "cpu"))  # another step
    assert not torch.equal(a, estimators.prompt_mask(6, 1, 2, (8, 40), 0.15, "cpu"))  # another seed


def test_chunked_logps_equal_one_big_pass(tiny_model):
    model, ro = tiny_model(), fake_rollout(N=10)
    is_masked = estimators.prompt_mask(0, 1, 0, ro.prompt_ids.shape, 0.15, "cpu")
    with torch.no_grad():
        whole = sequence_logps(model, ro, is_masked, MASK)
    torch.testing.assert_close(estimators.chunked_logps(model, ro, is_masked, MASK, chunk_size=4), whole)


# -- the questions and rollouts of a step --------------------------------------------------------


def test_questions_are_a_pure_function_of_seed_and_step_and_tasks_take_turns():
    pools = [(task, task.examples("train", 50)) for task in TINY_TASKS.values()]
    cfg = grpo.GRPOConfig(questions_per_step=9, seed=3)
    picks = grpo.grpo_questions(4, cfg, pools)
    assert [task.name for task, _ in picks] == ["countdown", "sudoku", "arith"] * 3
    assert all(ex in dict(pools)[task] for task, ex in picks)
    assert picks == grpo.grpo_questions(4, cfg, pools)
    assert picks != grpo.grpo_questions(5, cfg, pools)
    assert picks != grpo.grpo_questions(4, grpo.GRPOConfig(questions_per_step=9, seed=4), pools)


def test_rollouts_are_groups_of_g_seeded_samples_of_the_rl_prompt(tiny_model):
    model, tok, G = tiny_model(tokenizer=True), Tokenizer.tiny(), 3
    questions = [(TINY_TASKS["arith"], TINY_TASKS["arith"].examples("train", 1)[0]),
                 (TINY_TASKS["countdown"], TINY_TASKS["countdown"].examples("train", 1)[0])]
    items = [q for q in questions for _ in range(G)]  # rows q*G .. q*G+G-1 are question q's

    def roll(seed):
        return complete(model, tok, items, gen_length=8, block_length=8, steps=4, temperature=1.0,
                        remasking="random", generator=torch.Generator().manual_seed(seed), prompt="rl")

    ro = roll(0)
    assert ro.completion_ids.shape == (2 * G, 8)
    for row, (task, ex) in enumerate(items):
        prompt = ro.prompt_ids[row][ro.prompt_attention[row].bool()].tolist()
        assert prompt == tok.chat(task.rl_prompt(ex)) and tok.decode(prompt) == chat_prompt(task.rl_prompt(ex))
    assert len({tuple(row) for row in ro.completion_ids.tolist()}) == 2 * G  # G different samples each
    assert torch.equal(roll(0).completion_ids, ro.completion_ids)  # seeded
    assert not torch.equal(roll(1).completion_ids, ro.completion_ids)
    assert set(ro.rewards) == {"correct", "format"}  # both tasks' reward names
    torch.testing.assert_close(ro.reward, ro.rewards["correct"] + ro.rewards["format"])


def test_rollouts_stop_at_the_first_eos_where_the_run_reads_nothing_after_it():
    """With d1's estimator a rollout row stops being sampled at its first EOS: the same texts, rewards,
    loss tokens and log-probs as every step gives (the coupled estimator's rollouts run every step)."""
    model, tok = load_model(HERE / "checkpoints" / "tiny-sft.pt")[0], Tokenizer.tiny()
    questions = [(TINY_TASKS[name], TINY_TASKS[name].examples("train", 1)[0]) for name in ("arith", "sudoku")]
    cfg = grpo.GRPOConfig(group_size=3)
    P = grpo.prompt_length(cfg, tok, questions)
    early, full = (grpo.rollout(model, tok, questions, range(2), 0, P, replace(cfg, estimator=e), "cpu")
                   for e in ("d1", "coupled"))
    assert grpo.rollout_stop_ids("d1", tok) == (tok.eos_id,) and grpo.rollout_stop_ids("coupled", tok) is None
    assert (early.completion_ids[:3, 32:] == tok.mask_id).all()  # Arith's rows ended in block 1 of 3
    assert not (full.completion_ids == tok.mask_id).any()
    assert early.texts == full.texts and torch.equal(early.reward, full.reward)
    in_loss = grpo.completion_mask(full.completion_ids, tok.eos_id)  # (6, 96)
    assert torch.equal(grpo.completion_mask(early.completion_ids, tok.eos_id), in_loss)
    assert torch.equal(early.completion_ids[in_loss.bool()], full.completion_ids[in_loss.bool()])
    prompt_masked = estimators.prompt_mask(0, 0, 0, early.prompt_ids.shape, 0.15, "cpu")
    logps = [sequence_logps(model, ro, prompt_masked, tok.mask_id)[in_loss.bool()] for ro in (early, full)]
    assert torch.equal(*logps)


def test_mixed_remasking_gives_each_group_both_rules_by_place_and_other_rules_pass_through():
    assert grpo.group_remasking("mixed", 2, 4) == ["random", "low_confidence"] * 4
    assert grpo.group_remasking("random", 2, 4) == "random"
    assert grpo.group_remasking("low_confidence", 2, 4) == "low_confidence"
    assert grpo.GRPOConfig(remasking="mixed").remasking == "mixed"
    with pytest.raises(ValueError, match="remasking"):
        grpo.GRPOConfig(remasking="sideways")


def test_mixed_rollouts_are_the_same_in_any_sampler_batch(tiny_model):
    """complete() hands each sampler call its rows' rules (and generators): 2 calls of 3 rows give
    the rows of one call of 6."""
    model, tok, task = tiny_model(tokenizer=True), Tokenizer.tiny(), TINY_TASKS["arith"]
    items = [(task, ex) for ex in task.examples("train", 2) for _ in range(3)]

    def roll(batch_size):
        return complete(model, tok, items, gen_length=8, block_length=8, steps=4, temperature=1.0, prompt="rl",
                        remasking=grpo.group_remasking("mixed", 2, 3), batch_size=batch_size,
                        generator=grpo.rollout_generators(0, 0, range(2), 3, "cpu")).completion_ids

    assert torch.equal(roll(None), roll(3))


# -- a few GRPO steps raise the sampled reward ---------------------------------------------------


class SayO(Task):
    """One fixed question whose reward is 1.0 when the answer contains an "o": about 4 in 10 of a
    random model's 8-token answers do, since 38 of the tiny tokenizer's 437 tokens hold one."""
    name = "say-o"

    def examples(self, split, n=None):
        return ["the only question"]

    def rl_prompt(self, example):
        return "Say something with an o."

    eval_prompt = rl_prompt

    def rewards(self, completion, example):
        return {"has_o": self.correct(completion, example)}

    def correct(self, completion, example):
        return float("o" in completion)


def sampled_reward(model, task, n=128):
    """The mean reward of n answers to the task's question, sampled as GRPO's rollouts are."""
    ro = complete(model.eval(), Tokenizer.tiny(), [(task, task.examples("train")[0])] * n, gen_length=8,
                  block_length=8, steps=4, temperature=1.0, remasking="random",
                  generator=torch.Generator().manual_seed(123), prompt="rl")
    return ro.reward.mean().item()


def test_a_few_grpo_steps_raise_the_sampled_reward_of_one_question(tiny_checkpoint, tmp_path, monkeypatch):
    """train_grpo, 8 steps of 16 rollouts of SayO's one question, from a random model: the share of 128
    sampled answers with an "o" goes from 0.47 to 0.91. (With the advantage's sign flipped in
    grpo.group_advantages it falls to 0.13 and this test fails.)"""
    task, init = SayO(), tiny_checkpoint("init.pt")
    monkeypatch.setattr(grpo, "get_tiny_tasks", lambda names: [task])  # the run's only task
    cfg = grpo.GRPOConfig(init=str(init), out_dir=str(tmp_path / "grpo"), steps=8, questions_per_step=1,
                          group_size=16, gen_length=8, block_length=8, diffusion_steps=4, temperature=1.0, mu=2,
                          lr=1e-2, warmup_steps=0, dtype="float32", sample_every=0, seed=0)
    before = sampled_reward(load_model(init)[0], task)
    after = sampled_reward(grpo.train_grpo(cfg), task)
    assert 0.3 < before < 0.6
    assert after > before + 0.25, (before, after)


# -- --probe: what the rollouts find before any training -------------------------------------------


def test_probe_summary_counts_right_best_of_g_and_tied_groups():
    """Three groups of G = 3: one right answer of three, none, and Sudoku-like shares that tie."""
    correct = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    ro = replace(fake_rollout(N=9), correct=correct, reward=correct * 2 + 0.5,
                 well_formed=torch.tensor([True] * 8 + [False]))
    found = grpo.probe_summary(ro, 3)
    assert found["right"] == pytest.approx(2.5 / 9)
    assert found["best_of_g"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert found["tied"] == 2 / 3  # the all-wrong group and the group of equal shares
    assert found["well_formed"] == pytest.approx(8 / 9) and found["n"] == 9
    assert abs(found["reward"] - (2 * 2.5 / 9 + 0.5)) < 1e-6
    line = grpo.probe_line("say-o", found, 3)
    assert line.startswith("probe say-o: right 27.8% | best of 3 50.0% | tied groups 67% |") and "3 questions x 3" in line


class ManySayO(SayO):
    """SayO with 20 numbered questions."""

    def examples(self, split, n=None):
        return [f"question {i}" for i in range(20)]


def test_probe_samples_the_first_questions_as_step_zeros_rollout_and_trains_nothing(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch, capsys):
    task, init = ManySayO(), tiny_checkpoint("init.pt")
    monkeypatch.setattr(grpo, "get_tiny_tasks", lambda names: [task])
    cfg = grpo.GRPOConfig(init=str(init), out_dir=str(tmp_path / "probe"), probe=5, group_size=4, gen_length=8,
                          block_length=8, diffusion_steps=4, temperature=1.0, dtype="float32", seed=3, cache=None)
    found = grpo.train_grpo(cfg)
    # by hand: the first 5 questions, G rows each, every row's noise seeded as line 5 seeds step 0's
    model, tok = load_model(init)[0].eval(), Tokenizer.tiny()
    items = [(task, q) for q in task.examples("train")[:5] for _ in range(4)]
    ro = complete(model, tok, items, gen_length=8, block_length=8, steps=4, temperature=1.0, remasking="random",
                  prompt="rl", generator=grpo.rollout_generators(3, 0, range(5), 4, "cpu"))
    has_o = torch.tensor(["o" in text for text in ro.texts], dtype=torch.float32).view(5, 4)
    assert found["say-o"]["n"] == 20
    assert abs(found["say-o"]["right"] - has_o.mean().item()) < 1e-6
    assert abs(found["say-o"]["best_of_g"] - has_o.max(1).values.mean().item()) < 1e-6
    assert 0 < found["say-o"]["right"] < 1  # a random model writes an "o" in some answers, not all
    assert "probe say-o: right" in capsys.readouterr().out
    assert not (tmp_path / "probe").exists() or not any((tmp_path / "probe").iterdir())  # nothing trained or written


def test_probe_is_refused_under_torchrun_and_when_negative(monkeypatch):
    with pytest.raises(ValueError, match="probe"):
        grpo.GRPOConfig(probe=-1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--probe=8 runs in one process"):
        grpo.GRPOConfig(probe=8, questions_per_step=8)
