"""
Reward curves as a PNG, from the metrics.jsonl of GRPO runs (train_grpo draws its own at the end).

    python plot.py out/grpo/metrics.jsonl                  # writes out/grpo/reward_curve.png
    python plot.py out/a/metrics.jsonl out/b/metrics.jsonl --out=curves.png --labels="d1 sampler,dual cache"

One run: each key per step (faint) and its moving average (bold). Several runs: one colour each,
side by side on the same axes, so their rises compare at a glance.
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


def read_steps(metrics_path, stage="grpo"):
    """The rows of one stage's metrics log, in step order."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage", stage) == stage]
    if not rows:
        raise ValueError(f"{metrics_path}: no {stage} steps to plot")
    return rows


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
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise SystemExit(f"plot.py: error: {e}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
