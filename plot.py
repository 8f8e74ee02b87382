"""
Reward curves as a PNG, from the metrics.jsonl of GRPO runs (train_grpo draws its own at the end).

    python plot.py out/grpo/metrics.jsonl                  # writes out/grpo/reward_curve.png
    python plot.py out/a/metrics.jsonl out/b/metrics.jsonl --out=curves.png --labels="d1 sampler,dual cache"

One run: each key per step (faint) and its moving average (bold). Several runs: one colour each,
side by side on the same axes, so their rises compare at a glance. Every call also prints a table
with each run's minutes, its reward and accuracy over the first and last 20% of steps, and the
least-squares slope of the reward per step (with its standard error) and per minute of training:
the README's figures for its RL runs come from it.
matplotlib is optional: without it the picture is skipped with a message (the numbers are all
in metrics.jsonl anyway).
"""

import json
import math
import sys
from pathlib import Path


def moving_average(values, window):
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def read_steps(metrics_path, stage="grpo"):
    """The rows of one stage's metrics log, in step order."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage", stage) == stage]
    if not rows:
        raise ValueError(f"{metrics_path}: no {stage} steps to plot")
    return rows


def least_squares_slope(xs, ys):
    """The slope of the least-squares line through (xs, ys) and its standard error (the usual
    sqrt(residual variance / sum (x - mean x)^2), with n - 2 degrees of freedom)."""
    n = len(xs)
    if n < 3:
        raise ValueError(f"a slope with a standard error needs at least 3 steps, got {n}")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(residual / (n - 2) / sxx)


def training_seconds(clock):
    """Total seconds from the per-step `seconds` of metrics.jsonl, which count from the start of
    the run; a resumed run starts counting again, so each drop starts a new segment."""
    total, previous = 0.0, 0.0
    for seconds in clock:
        total += seconds - previous if seconds >= previous else seconds
        previous = seconds
    return total


def summarize_run(metrics_path):
    """One RL run in numbers: {steps, minutes, reward_first, reward_last, accuracy_first,
    accuracy_last, slope, slope_se, slope_per_minute}. first / last: means over the first and last
    20% of steps; slope: reward per step (least squares; nan for runs under 3 steps); per minute:
    slope / mean minutes per step."""
    rows = read_steps(metrics_path)
    # A single step's reward is noisy (each step sees a few new questions), so the run's start and end
    # are the means over a fifth of its steps, and its trend is a line fitted through every step.
    fifth = max(1, len(rows) // 5)
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    slope, slope_se = (least_squares_slope([r["step"] for r in rows], [r["reward"] for r in rows])
                       if len(rows) >= 3 else (math.nan, math.nan))
    minutes = training_seconds([r.get("seconds", 0.0) for r in rows]) / 60
    # slope per minute = slope per step x steps per minute: what a minute of training buys, the
    # figure that compares estimators whose steps cost different times
    return {"steps": len(rows), "minutes": minutes,
            "reward_first": mean("reward", rows[:fifth]), "reward_last": mean("reward", rows[-fifth:]),
            "accuracy_first": mean("accuracy", rows[:fifth]), "accuracy_last": mean("accuracy", rows[-fifth:]),
            "slope": slope, "slope_se": slope_se,
            "slope_per_minute": slope * len(rows) / minutes if minutes else float("nan")}


def print_summaries(metrics_paths, labels=None):
    """A markdown table of summarize_run for each run."""
    labels = labels or [str(Path(p).parent) for p in metrics_paths]
    print("| run | steps | minutes | reward, first -> last 20% | slope per step (SE) | slope per minute "
          "| accuracy, first -> last 20% |\n|---|---|---|---|---|---|---|")
    for path, label in zip(metrics_paths, labels):
        s = summarize_run(path)
        print(f"| {label} | {s['steps']} | {s['minutes']:.1f} | {s['reward_first']:.3f} -> {s['reward_last']:.3f} "
              f"| {s['slope'] * 1e3:.2f}e-3 ({s['slope_se'] * 1e3:.2f}e-3) | {s['slope_per_minute'] * 1e3:.2f}e-3 "
              f"| {100 * s['accuracy_first']:.1f}% -> {100 * s['accuracy_last']:.1f}% |")


def plot_rewards(metrics_paths, keys=("reward", "accuracy"), labels=None, out=None):
    """Plot each key of each run per step (faint) with its moving average (bold); returns the PNG
    path or None. metrics_paths: one path or a list; out: default reward_curve.png beside the first."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the reward-curve picture (pip install matplotlib)")
        return None
    paths = [Path(metrics_paths)] if isinstance(metrics_paths, (str, Path)) else [Path(p) for p in metrics_paths]
    labels = labels or [str(p.parent) for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} metrics files: give one per file")
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for colour, (path, label) in enumerate(zip(paths, labels)):
            rows = read_steps(path)
            steps, values = [r["step"] for r in rows], [r[key] for r in rows]
            ax.plot(steps, values, alpha=0.25, color=f"C{colour}")
            ax.plot(steps, moving_average(values, max(1, len(values) // 10)), color=f"C{colour}", linewidth=2,
                    label=label if len(paths) > 1 else None)
        ax.set_xlabel("GRPO step")
        ax.set_title(f"mean {key} per step")
        ax.grid(alpha=0.3)
        if len(paths) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out) if out else paths[0].with_name("reward_curve.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"reward curve: {out}")
    return out


def main(argv):
    """python plot.py METRICS.jsonl [METRICS.jsonl ...] [--out=PNG] [--labels=a,b,...]"""
    options = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
    paths = [arg for arg in argv if not arg.startswith("--")]
    unknown = set(options) - {"out", "labels"}
    if not paths or unknown or any(arg.startswith("--") and "=" not in arg for arg in argv):
        raise SystemExit(f"usage: python plot.py METRICS.jsonl [...] [--out=PNG] [--labels=a,b]"
                         + (f" (unknown: --{', --'.join(sorted(unknown))})" if unknown else ""))
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"plot.py: error: no such metrics file: {missing[0]}")
    labels = options["labels"].split(",") if "labels" in options else None
    try:
        plot_rewards(paths, labels=labels, out=options.get("out"))
        print_summaries(paths, labels)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise SystemExit(f"plot.py: error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
