"""
Train the tiny LLaDA-style model, one stage at a time: pretrain -> sft -> grpo.

    python train.py --stage pretrain     # from scratch (pretrain.py)
    python train.py --stage sft          # masked SFT from checkpoints/tiny-base.pt (sft.py)
    python train.py --stage grpo         # diffu-GRPO from checkpoints/tiny-sft.pt (grpo.py)
    python train.py --stage grpo --init=checkpoints/tiny-base.pt --out_dir=out/grpo-base
    python train.py --stage pretrain --steps=200 --out_dir=out/quick      # a quick look
    python train.py --stage pretrain --resume             # continue out_dir/ckpt.pt exactly
    python train.py --stage grpo --help                   # every key, its default and meaning
    python train.py --stage sft --device=cuda --dtype=float32            # on a GPU

The README gives each stage's time on a 2-core CPU. Each stage is a config dataclass and one
visible training loop in its own file; this file only picks the stage. Every key of the stage's
config can be set with --key=value (or --key value; a bare --flag sets a bool): values are
type-checked, an unknown key is an error that suggests the nearest one, and the resolved config is
printed at start and saved in every checkpoint. Outputs, in out_dir:
    ckpt.pt          model (official LLaDA key names), config, optimizer, step, RNG states
    metrics.jsonl    one JSON object per logged step (an older log is kept as metrics.jsonl.1, ...)
A run that fails or is interrupted ends with one line naming what it kept in out_dir
(NANO_D1_DEBUG=1 shows the traceback instead).
"""

import sys

from common import ConfigError, cli, one_line_errors, report_what_was_kept
from grpo import GRPOConfig, train_grpo
from pretrain import PretrainConfig, train_pretrain
from sft import SFTConfig, train_sft

STAGES = {"pretrain": (PretrainConfig, train_pretrain), "sft": (SFTConfig, train_sft), "grpo": (GRPOConfig, train_grpo)}


def main(argv):
    with one_line_errors("train.py"):
        if argv[:1] == ["--stage"] and len(argv) > 1:
            stage, rest = argv[1], argv[2:]
        elif argv and argv[0].startswith("--stage="):
            stage, rest = argv[0].split("=", 1)[1], argv[1:]
        else:
            raise ConfigError(f"usage: python train.py --stage {{{','.join(STAGES)}}} [--key=value ...] "
                              "(--stage first)")
        if stage not in STAGES:
            raise ConfigError(f"--stage={stage!r}: expected one of {', '.join(STAGES)}")
        config_cls, train_fn = STAGES[stage]
        cfg = cli(config_cls, rest)  # every key checked before anything is loaded or written
    with report_what_was_kept("train.py", cfg.out_dir):
        return train_fn(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
