"""grpo.py's dynamic sampling (--resample_rounds, DAPO): which groups are replaced, by what, and
what a run logs."""
import json

import pytest
import torch

import grpo
from common import ConfigError
from tests.test_grpo import SayO, fake_rollout


class Numbered(SayO):
    """SayO with 50 questions: the stand-in questions of dynamic sampling have something to draw from."""

    def examples(self, split, n=None):
        return [f"question {i}" for i in range(50)]


def test_tied_groups_are_those_whose_rewards_are_all_equal():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5])
    assert grpo.tied_groups(rewards, 3) == [0, 2]


def test_replace_groups_swaps_exactly_the_rows_of_the_tied_groups():
    """Groups 0 and 2 of 3 (G = 2) take the fresh rows in order; group 1 keeps its own."""
    ro, fresh = fake_rollout(N=6, seed=0), fake_rollout(N=4, seed=1)
    fresh.texts[:] = ["a", "b", "c", "d"]
    out = grpo.replace_groups(ro, [0, 2], fresh, G=2)
    assert out.texts == ["a", "b", "", "", "c", "d"]
    for name in ("prompt_ids", "completion_ids", "reward", "correct"):
        new, old, f = getattr(out, name), getattr(ro, name), getattr(fresh, name)
        assert torch.equal(new[[0, 1, 4, 5]], f), name
        assert torch.equal(new[2:4], old[2:4]), name
    assert torch.equal(out.rewards["r"], out.reward)
    assert out.steps == ro.steps + fresh.steps
    assert ro.texts == [""] * 6 and torch.equal(ro.reward, fake_rollout(N=6, seed=0).reward)  # input untouched


def test_stand_in_questions_are_pure_keep_the_task_and_differ_by_round():
    pools = [("task-a", list(range(1000))), ("task-b", list(range(1000, 2000)))]
    cfg = grpo.GRPOConfig(questions_per_step=4, seed=3)
    first, second = grpo.grpo_questions(5, cfg, pools, 1), grpo.grpo_questions(5, cfg, pools, 2)
    assert first == grpo.grpo_questions(5, cfg, pools, 1)  # a pure function of (seed, step, q, round)
    assert [t for t, _ in first] == [t for t, _ in grpo.grpo_questions(5, cfg, pools)]  # each slot keeps its task
    assert first != second and first != grpo.grpo_questions(5, cfg, pools)
    assert grpo.grpo_questions(5, cfg, pools) == grpo.grpo_questions(5, cfg, pools, 0)  # round 0: as before


def test_resample_rounds_are_refused_under_fsdp_and_when_negative():
    with pytest.raises(ConfigError, match="resample_rounds"):
        grpo.GRPOConfig(resample_rounds=1, fsdp=True)
    with pytest.raises(ValueError, match="resample_rounds"):
        grpo.GRPOConfig(resample_rounds=-1)


def run(tiny_checkpoint, tmp_path, monkeypatch, task, rounds, name):
    """One step of train_grpo on `task` (8 questions, G = 3) -> its metrics line."""
    monkeypatch.setattr(grpo, "get_tiny_tasks", lambda names: [task])
    cfg = grpo.GRPOConfig(init=str(tiny_checkpoint("init.pt")), out_dir=str(tmp_path / name), steps=1,
                          questions_per_step=8, group_size=3, gen_length=8, block_length=8, diffusion_steps=4,
                          temperature=1.0, mu=1, dtype="float32", sample_every=0, seed=0, resample_rounds=rounds)
    grpo.train_grpo(cfg)
    return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])


def test_a_step_replaces_every_tied_group_of_its_first_rollout(tiny_checkpoint, tmp_path, monkeypatch):
    """The first rollout is the same with and without resampling; every group tied in it is
    replaced once, and the groups trained on tie no more often than the first rollout's did."""
    plain = run(tiny_checkpoint, tmp_path, monkeypatch, Numbered(), 0, "plain")
    dynamic = run(tiny_checkpoint, tmp_path, monkeypatch, Numbered(), 3, "dynamic")
    assert "resampled" not in plain
    assert abs(dynamic["first_reward"] - plain["reward"]) < 1e-6  # the first rollout, before any choice
    assert dynamic["resampled"] >= round(plain["zero_std_share"] * 8) > 0
    assert dynamic["zero_std_share"] <= plain["zero_std_share"]


class AlwaysRight(Numbered):
    """Every answer earns 1.0: every group ties, in every round."""

    def correct(self, completion, example):
        return 1.0


def test_groups_that_always_tie_are_resampled_every_round(tiny_checkpoint, tmp_path, monkeypatch):
    line = run(tiny_checkpoint, tmp_path, monkeypatch, AlwaysRight(), 2, "tied")
    assert line["resampled"] == 8 * 2 and line["zero_std_share"] == 1.0
