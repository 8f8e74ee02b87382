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
    python train.py --stage grpo --preset=d1 --task=gsm8k --plan=llada-8b   # memory plan only (memory.py)
    torchrun --nproc_per_node=8 train.py --stage sft      # 8 GPUs (or 8 CPU processes): the same run
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=8 train.py --stage sft  # R = 0, 1

The README gives each stage's time on a 2-core CPU. Each stage is a config dataclass and one
visible training loop in its own file; this file only picks the stage. Every key of the stage's
config can be set with --key=value (or --key value; a bare --flag sets a bool): values are
type-checked, an unknown key is an error that suggests the nearest one, and the resolved config is
printed at start and saved in every checkpoint. Outputs, in out_dir:
    ckpt.pt          model (official LLaDA key names), config, optimizer, step, RNG states
    metrics.jsonl    one JSON object per logged step (an older log is kept as metrics.jsonl.1, ...)
A run that fails or is interrupted ends with one line naming what it kept in out_dir
(NANO_D1_DEBUG=1 shows the traceback instead).

Under torchrun (PyTorch's launcher; distributed.py) the global batch stays --batch_size rows,
split over the processes, so a run's numbers do not depend on how many ran it; rank 0 alone
prints and writes, and a run resumes on any number of processes.
"""

import sys

import distributed
from common import ConfigError, cli, one_line_errors, report_what_was_kept
from grpo import GRPOConfig, train_grpo
from memory import fit_table, plan_for
from pretrain import PretrainConfig, train_pretrain
from sft import SFTConfig, train_sft

STAGES = {"pretrain": (PretrainConfig, train_pretrain), "sft": (SFTConfig, train_sft), "grpo": (GRPOConfig, train_grpo)}


def main(argv):
    try:
        return run_stage(argv)
    finally:
        distributed.teardown()  # leave torchrun's process group (if any), after an error too


def run_stage(argv):
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
        model, rest = take_plan(rest)
        if model is not None and stage == "pretrain":
            raise ConfigError("--plan is for sft and grpo")
        config_cls, train_fn = STAGES[stage]
        cfg = cli(config_cls, rest)  # every key checked before anything is loaded or written
        if model is not None:  # --plan=MODEL: the memory plan of this run on MODEL, then stop
            plan = plan_for(model, stage, cfg)
            print(f"{plan}\n\n{fit_table(plan)}")
            return plan
    with report_what_was_kept("train.py", cfg.out_dir):
        return train_fn(cfg)


def take_plan(argv):
    """(MODEL of --plan=MODEL or --plan MODEL, or None; argv without it)."""
    for i, arg in enumerate(argv):
        if arg.partition("=")[0] == "--plan":
            n = 1 if "=" in arg else 2  # the arguments it takes
            model = arg.partition("=")[2] if n == 1 else "".join(argv[i + 1:i + 2])
            if not model or model.startswith("--"):
                raise ConfigError("--plan needs a model: llada-8b, tiny, a LLaDA folder or a .pt file")
            return model, argv[:i] + argv[i + n:]
    return None, argv


if __name__ == "__main__":
    main(sys.argv[1:])
