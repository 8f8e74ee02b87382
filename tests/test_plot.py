"""plot.py: one run's reward curve, several runs side by side, and clear errors for bad input."""
import json
import math

import pytest

import plot


def write_metrics(path, rewards, stage="grpo"):
    """A metrics.jsonl as train_grpo writes it (the keys plot.py reads), one row per step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"stage": stage, "step": i + 1, "reward": r, "accuracy": r / 2} for i, r in enumerate(rewards)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_moving_average_averages_the_last_window_values():
    assert plot.moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_read_steps_keeps_one_stage_in_order(tmp_path):
    path = write_metrics(tmp_path / "m.jsonl", [0.1, 0.2])
    with path.open("a") as f:
        f.write(json.dumps({"stage": "sft", "step": 1, "loss": 2.0}) + "\n")
    assert [r["reward"] for r in plot.read_steps(path)] == [0.1, 0.2]


def test_one_run_and_two_runs_side_by_side_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    a = write_metrics(tmp_path / "a" / "metrics.jsonl", [0.1, 0.3, 0.2, 0.4])
    b = write_metrics(tmp_path / "b" / "metrics.jsonl", [0.2, 0.2, 0.5])
    one = plot.plot_rewards(a)
    assert one == a.with_name("reward_curve.png") and one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = plot.plot_rewards([a, b], labels=["a", "b"], out=tmp_path / "both.png")
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and both.stat().st_size > 1000


def test_bad_input_is_refused_naming_the_problem(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = write_metrics(tmp_path / "a.jsonl", [0.1, 0.2])
    with pytest.raises(ValueError, match="2 labels for 1 metrics files"):
        plot.plot_rewards([a], labels=["x", "y"])
    sft_only = write_metrics(tmp_path / "sft.jsonl", [0.1], stage="sft")
    with pytest.raises(SystemExit, match="sft.jsonl: no grpo steps to plot"):
        plot.main([str(sft_only)])
    with pytest.raises(SystemExit, match="no such metrics file: .*missing.jsonl"):
        plot.main([str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit, match="unknown: --colour"):
        plot.main([str(a), "--colour=red"])


def test_a_run_summary_gives_its_slope_minutes_and_first_and_last_fifth(tmp_path, capsys):
    rewards = [0.1 + 0.01 * step for step in range(1, 11)]  # a straight line: slope 0.01, no scatter
    path = write_metrics(tmp_path / "run" / "metrics.jsonl", rewards)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:  # 6 s per step, counted from the start; the run resumed after step 5
        row["seconds"] = 6.0 * (row["step"] if row["step"] <= 5 else row["step"] - 5)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = plot.summarize_run(path)
    assert summary["steps"] == 10 and summary["minutes"] == pytest.approx(1.0)
    assert summary["slope"] == pytest.approx(0.01) and summary["slope_se"] == pytest.approx(0.0, abs=1e-12)
    assert summary["reward_first"] == pytest.approx(0.115) and summary["reward_last"] == pytest.approx(0.195)
    assert summary["accuracy_last"] == pytest.approx(0.195 / 2)
    assert summary["slope_per_minute"] == pytest.approx(0.1)  # 10 steps in one minute
    plot.print_summaries([path], ["straight"])
    assert "| straight | 10 | 1.0 | 0.115 -> 0.195 | 10.00e-3 (0.00e-3) | 100.00e-3 |" in capsys.readouterr().out
    short = write_metrics(tmp_path / "short.jsonl", [0.1, 0.2])  # a two-step run: no slope, the rest as usual
    assert math.isnan(plot.summarize_run(short)["slope"]) and plot.summarize_run(short)["reward_last"] == 0.2


def test_the_slope_standard_error_grows_with_the_scatter():
    slope, se = plot.least_squares_slope([1, 2, 3, 4], [0.0, 1.0, 0.0, 1.0])
    assert slope == pytest.approx(0.2) and se == pytest.approx((0.8 / 2 / 5) ** 0.5)
    with pytest.raises(ValueError, match="at least 3 steps, got 2"):
        plot.least_squares_slope([1, 2], [0.0, 1.0])
