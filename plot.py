"""
Reward curves as a PNG, from a run's metrics.jsonl (written at the end of every GRPO run).

    python plot.py out/grpo/metrics.jsonl            # writes out/grpo/reward_curve.png

matplotlib is optional: without it the picture is skipped with a message (the numbers are all
in metrics.jsonl anyway).
"""

import json
import sys
from pathlib import Path


def moving_average(values, window):
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_rewards(metrics_path, keys=("reward", "accuracy")):
    """Plot each key per step (faint) and its moving average (bold); returns the PNG path or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the reward-curve picture (pip install matplotlib)")
        return None
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
    for ax, key in zip(axes, keys):
        values = [r[key] for r in rows]
        ax.plot(steps, values, alpha=0.3, color="C0")
        ax.plot(steps, moving_average(values, max(1, len(values) // 10)), color="C0", linewidth=2)
        ax.set_xlabel("GRPO step")
        ax.set_title(f"mean {key} per step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(metrics_path).with_name("reward_curve.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"reward curve: {out}")
    return out


if __name__ == "__main__":
    plot_rewards(sys.argv[1])
