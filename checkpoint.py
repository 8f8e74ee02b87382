"""
Project checkpoints: one `.pt` file per run, written atomically, read back with clear errors.

    from checkpoint import save_checkpoint, load_checkpoint, load_model
    save_checkpoint({"model": model.state_dict(), "config": ..., ...}, "out/ckpt.pt")
    model, ckpt = load_model("checkpoints/tiny-sft.pt")

A checkpoint is a plain dict:
    model       state_dict with the official LLaDA key names (model.transformer.*)
    config      the model Config as a dict (official field names)
    stage       "pretrain" | "sft" | "grpo"; train_config: the stage's resolved config
    step, optimizer, rng       for --resume (absent from the slim checkpoints shipped in checkpoints/)
"""

import os
from dataclasses import asdict
from pathlib import Path

import torch

from model import Config, Model


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another model."""


def save_checkpoint(obj, path):
    """torch.save to a temporary file, then rename: a crash mid-write never destroys the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path, map_location="cpu"):
    """Read a project checkpoint, turning torch's deep errors into one clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated zip, garbage bytes, a pickle with foreign objects ...
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(e).__name__}: {first_line[:200]})") from None
    for key in ("model", "config"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry; is it a nano-d1 checkpoint?")
    return ckpt


def check_state_dict(model, state_dict, source):
    """Refuse missing, unexpected or wrongly shaped tensors, naming the first few."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k}: {tuple(state_dict[k].shape)} in file, {tuple(v.shape)} expected"
             for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = ([f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]] + wrong[:3])
    if problems:
        raise CheckpointError(f"{source} does not fit this model config: " + "; ".join(problems))


def load_model(path, device="cpu", expect_config=None, **config_overrides):
    """Build the model a checkpoint describes and load its weights. Returns (model, checkpoint).

    expect_config: a Config the caller needs (e.g. the one a run was started with); a checkpoint
    with other sizes is refused with the fields that differ."""
    ckpt = load_checkpoint(path)
    config = Config(**{**ckpt["config"], **config_overrides})
    if expect_config is not None:
        diffs = {k: (v, getattr(expect_config, k)) for k, v in asdict(config).items()
                 if k != "attn_impl" and getattr(expect_config, k) != v}
        if diffs:
            raise CheckpointError(f"checkpoint {path} is for a different model config: "
                                  + ", ".join(f"{k}={a} (expected {b})" for k, (a, b) in diffs.items()))
    model = Model(config)
    check_state_dict(model, ckpt["model"], f"checkpoint {path}")
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt
