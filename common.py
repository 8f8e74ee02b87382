"""
The plumbing every entry point shares: command-line configs (with presets), device and precision,
the learning rate schedule and optimizer, seeds, the model a run starts from (after its memory plan)
and the metrics log.

    from common import cli, pick_device, autocast
    cfg = cli(SFTConfig, sys.argv[1:])      # --key=value overrides, type-checked; --help lists keys
    device = pick_device(cfg.device)         # "auto" -> cuda, then mps, then cpu

Nothing here knows about diffusion or GRPO: train.py's stages, eval.py, sample.py and bench.py all
import this file, and it imports only the model, checkpoint, LoRA and memory-plan files. (Writing,
resuming and exporting a run's checkpoint is checkpoint.py's: save_run, restore, finish.)

One command-line convention for every script. A config is a dataclass; each field is a key:

    python train.py --stage grpo --mu=2 --lr 1e-5 --resume        # --key=value, --key value, --flag
    python eval.py --rescore a.json b.json                        # a tuple field takes several values

Values are converted to the field's type (int, float, str, bool, tuple) and checked; an unknown
key is an error that suggests the nearest valid one; `--help` prints every key with its default
and the comment written beside it in the dataclass.
"""

import contextlib
import dataclasses
import difflib
import functools
import inspect
import json
import math
import os
import random
import re
import time
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

import distributed
from checkpoint import check_checkpoint_path, check_model_path, load_any, model_config
from lora import LLADA_LINEARS, add_lora
from memory import plan_run
from tasks_tiny import get_tiny_tasks


class ConfigError(ValueError):
    """A bad key or value on the command line (or in a config): the message names it."""


# -----------------------------------------------------------------------------
# Command-line configs: one dataclass per script or stage


def cli(cls, argv):
    """Build the dataclass `cls` from argv. --help prints the keys and exits."""
    if "--help" in argv or "-h" in argv:
        print(config_help(cls))
        raise SystemExit(0)
    return parse_config(cls, argv)


def parse_config(cls, argv):
    """--key=value / --key value / --flag arguments -> cls(**values), every value type-checked."""
    hints = typing.get_type_hints(cls)
    types = {f.name: hints[f.name] for f in fields(cls)}  # the keys (not class constants such as PRESETS)
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: write --key=value")
        key, eq, value = arg[2:].partition("=")
        if key not in types:
            near = difflib.get_close_matches(key, types, n=1)
            hint = f"did you mean --{near[0]}? " if near else ""
            raise ConfigError(f"unknown key --{key}; {hint}valid keys: {', '.join(sorted(types))}")
        if key in values:
            raise ConfigError(f"--{key} is given twice")
        if eq:
            i += 1
        elif types[key] is bool:  # a bare --flag
            value, i = "true", i + 1
        else:  # --key value (a tuple field takes every value up to the next --key)
            taken = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                taken.append(argv[i + 1])
                i += 1
                if typing.get_origin(types[key]) is not tuple:
                    break
            if not taken:
                raise ConfigError(f"--{key} needs a value")
            value, i = ",".join(taken), i + 1
        values[key] = convert(key, value, types[key])
    preset = apply_preset(cls, values)
    try:
        cfg = cls(**{**preset, **values})  # a key on the command line overrides the preset's
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a check in the dataclass's __post_init__
        raise ConfigError(str(e)) from None
    # Where each non-default value came from, for start_run's printout.
    cfg.origins = {**{k: f"preset {values['preset']}" for k in preset},
                   **{k: "command line" + (f", preset {values['preset']}: {preset[k]!r}" if k in preset else "")
                      for k in values}}
    return cfg


def apply_preset(cls, values):
    """The keys --preset=NAME fills in: cls.PRESETS[NAME](values), a function of the command line's
    values (d1's GRPO preset depends on --task). {} without --preset."""
    name = values.get("preset")
    if not name:
        return {}
    presets = getattr(cls, "PRESETS", {})
    if name not in presets:
        raise ConfigError(f"--preset={name!r}: expected one of {', '.join(presets) or '(none for this stage)'}")
    return presets[name](values)


def convert(key, value, typ):
    """The string `value` as `typ`: int, float, str, bool, tuple[float, float] or tuple[str, ...];
    for an optional key (e.g. `float | None`), "none" is None."""
    if type(None) in typing.get_args(typ):
        if value.lower() == "none":
            return None
        [inner] = [t for t in typing.get_args(typ) if t is not type(None)]
        try:
            return convert(key, value, inner)
        except ConfigError:
            raise ConfigError(f"--{key}={value!r}: expected {_type_name(typ)}") from None
    if typing.get_origin(typ) is tuple:
        args = typing.get_args(typ)
        items = [v.strip() for v in value.split(",") if v.strip()]
        if args[-1] is not Ellipsis and len(items) != len(args):
            raise ConfigError(f"--{key}={value!r}: expected {len(args)} comma-separated values")
        return tuple(convert(key, v, args[0]) for v in items)
    if typ is bool:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
    else:
        try:
            result = typ(value)
            if typ is not float or math.isfinite(result):
                return result
        except ValueError:
            pass
    raise ConfigError(f"--{key}={value!r}: expected {_type_name(typ)}")


def _type_name(typ):
    if type(None) in typing.get_args(typ):
        return " or ".join(_type_name(t) for t in typing.get_args(typ) if t is not type(None)) + " or none"
    if typing.get_origin(typ) is tuple:
        return "comma-separated " + _type_name(typing.get_args(typ)[0]) + " values"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(typ, str(typ))


def config_help(cls):
    """Every key of cls with its default and the comment beside its field in the source."""
    comments = {}
    for klass in reversed(cls.__mro__):  # subclasses' comments override their bases'
        if dataclasses.is_dataclass(klass):
            for m in re.finditer(r"^\s+(\w+):[^=\n]+=[^#\n]*#\s*(.+)$", inspect.getsource(klass), re.M):
                comments[m.group(1)] = m.group(2)
    lines = [f"{cls.__name__}: {(cls.__doc__ or '').strip().splitlines()[0]}", "keys (--key=value):"]
    for f in fields(cls):
        default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        lines.append(f"  --{f.name}={default}".ljust(36) + f"  {comments.get(f.name, '')}")
    return "\n".join(lines)


@contextlib.contextmanager
def one_line_errors(program):
    """Turn a user error into one line and exit status 1, never a traceback: a ValueError (a bad key
    or value, an unusable checkpoint, task or data file; every error class of this project is one)
    or an OSError (a path that cannot be read or written). Under torchrun every process meets the
    same user error; rank 0 says it, the others just exit with status 1."""
    try:
        yield
    except (ValueError, OSError) as e:
        raise SystemExit(f"{program}: error: {e}" if distributed.is_main() else 1) from None


@contextlib.contextmanager
def report_what_was_kept(program, out_dir):
    """Around a training run: a failure or Ctrl-C ends in one line that says what this run left in
    out_dir (its last checkpoint, its metrics log). NANO_D1_DEBUG=1 shows the traceback instead.

    Under torchrun, rank 0 says it. An interrupt or a user error (a key, a file, a checkpoint) reaches
    every process alike, so the others just exit with status 1; any other error may be a process's
    own (one GPU out of memory), so each process that meets one names itself in its line."""
    started = time.time()
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:
        if os.environ.get("NANO_D1_DEBUG") == "1":
            raise
        if isinstance(e, KeyboardInterrupt):
            what = "interrupted"
        elif isinstance(e, (ValueError, OSError)):  # a user error met inside the run (a bad checkpoint, ...)
            what = f"error: {e}"
        else:
            what = f"error: {type(e).__name__}: {e} (NANO_D1_DEBUG=1 shows the traceback)"
        if distributed.is_main():
            raise SystemExit(f"{program}: {what}; {kept_files(out_dir, started)}") from None
        if isinstance(e, (KeyboardInterrupt, ValueError, OSError)):
            raise SystemExit(1) from None
        raise SystemExit(f"{program} (rank {os.environ.get('RANK')}): {what}") from None


def kept_files(out_dir, since):
    """"kept: out/grpo/ckpt.pt (written 12:03:11), out/grpo/metrics.jsonl (to step 44)": the files
    of out_dir written since `since` (a time.time()), or that there are none."""
    kept = []
    ckpt, log = Path(out_dir) / "ckpt.pt", Path(out_dir) / "metrics.jsonl"
    if ckpt.is_file() and ckpt.stat().st_mtime >= since:
        kept.append(f"{ckpt} (written {time.strftime('%H:%M:%S', time.localtime(ckpt.stat().st_mtime))})")
    if log.is_file() and log.stat().st_mtime >= since:
        try:
            step = json.loads(log.read_text().splitlines()[-1]).get("step")
        except (ValueError, IndexError):  # a line cut short by the failure itself
            step = "?"
        kept.append(f"{log} (to step {step})")
    return "kept: " + ", ".join(kept) if kept else f"this run wrote nothing to {out_dir}"


def check_choice(key, value, choices):
    """Raise ConfigError unless value is one of choices (names all of them)."""
    if value not in choices:
        raise ConfigError(f"--{key}={value!r}: expected one of {', '.join(map(str, choices))}")


def check_range(cfg, low, high, *keys, low_open=False):
    """Raise ConfigError unless low <= cfg.key <= high (low < cfg.key with low_open) for every key."""
    for key in keys:
        value = getattr(cfg, key)
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bound = f"more than {low}" if low_open else f"at least {low}"
            bound += f" and at most {high}" if high is not None else ""
            raise ConfigError(f"--{key}={value}: must be {bound}")


def check_out_paths(out_dir, export=""):
    """out_dir must be a folder (or not exist yet). export: a path ending in .pt (a slim project
    checkpoint) or a folder for a Hugging Face-format model: new, empty, or an earlier export."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out_dir={out_dir}: is a file; expected a folder (it is created if missing)")
    export = Path(export) if export else None
    if export is None:
        return
    if export.suffix == ".pt" and export.is_dir():
        raise ConfigError(f"--export={export}: is a folder; a .pt export is a file")
    if export.suffix != ".pt" and export.is_file():
        raise ConfigError(f"--export={export}: is a file; expected a .pt path or a folder (Hugging Face format)")
    if export.suffix != ".pt" and export.is_dir() and any(export.iterdir()) and not (export / "config.json").is_file():
        raise ConfigError(f"--export={export}: a folder that holds other files (no config.json); "
                          "export to a new or empty folder")


# -----------------------------------------------------------------------------
# The keys every training stage has, and those SFT and GRPO share


@dataclass
class RunConfig:
    """Keys every training stage has."""

    steps: int = 3000  # optimizer steps
    out_dir: str = "out/run"  # ckpt.pt and metrics.jsonl go here
    seed: int = 1337  # seeds the model init, the data order and every noise draw
    device: str = "auto"  # auto -> cuda, then mps, then cpu
    dtype: str = "auto"  # autocast dtype: bfloat16, float32, or auto (bf16 where this device runs it fast)
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 50  # linear warmup from 0
    decay_steps: int = 0  # cosine decay length; 0 = steps (set it to continue a schedule longer)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio (1.0 = constant after warmup)
    weight_decay: float = 0.1  # AdamW, on matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    grad_clip: float = 1.0  # max gradient norm
    resume: bool = False  # continue out_dir/ckpt.pt exactly (model, optimizer, RNG, step)
    log_every: int = 25  # print and log a metrics line every N steps
    sample_every: int = 250  # decode a few samples every N steps (0 = never)
    ckpt_every: int = 250  # write out_dir/ckpt.pt every N steps (and at the end)
    export: str = ""  # at the end also write the weights here: FILE.pt (project format) or DIR (Hugging Face format)
    micro_batch: int = 0  # rows per forward/backward; 0 = the whole batch (else gradients accumulate)
    checkpointing: bool = False  # activation checkpointing per block: less memory, ~1/3 more compute
    fsdp: bool = False  # under torchrun: shard weights, grads and AdamW state over the processes (FSDP), not DDP

    def __post_init__(self):
        """Check every key before anything is loaded, created or written."""
        self.dtype = pick_dtype(self.dtype, pick_device(self.device))  # checks the name; "auto" -> what runs fast here
        check_range(self, 1, None, "steps", "log_every", "ckpt_every")
        check_range(self, 0, None, "warmup_steps", "decay_steps", "sample_every", "weight_decay", "micro_batch")
        check_range(self, 0, None, "lr", "grad_clip", low_open=True)
        check_range(self, 0, 1, "min_lr_ratio")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"--betas={','.join(map(str, self.betas))}: each must be in [0, 1)")
        check_out_paths(self.out_dir, self.export)
        if self.resume:
            check_checkpoint_path(Path(self.out_dir) / "ckpt.pt")  # --resume needs a run to continue


@dataclass
class FinetuneConfig(RunConfig):
    """What SFT and GRPO share: a starting checkpoint, the tiny tasks, optional LoRA."""

    init: str = "checkpoints/tiny-base.pt"  # the starting model: a project .pt file or a LLaDA folder (HF format)
    data: str = ""  # d1's data, a local file (README, "d1 at full scale"); empty = the tiny tasks
    tasks: str = "all"  # tiny tasks, comma-separated (countdown,sudoku,arith) or all
    preset: str = ""  # d1 = d1's hyperparameters for LLaDA-8B (start-up prints each key it set)
    memory_limit_gb: float | None = None  # refuse a run whose memory plan exceeds this; none = the device's memory
    lora_r: int = 0  # 0 = full fine-tuning (the tiny default); d1 fine-tunes LLaDA-8B with LoRA r=128
    lora_alpha: float = 16.0  # LoRA scale alpha / r
    lora_dropout: float = 0.0  # dropout on the LoRA branch's input
    lora_targets: str = "q_proj,k_proj,v_proj,up_proj"  # d1's RL targets (LLaDA names)
    warmup_steps: int = 20  # linear warmup from 0
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW (d1)

    def __post_init__(self):
        super().__post_init__()
        check_model_path(self.init, "init")
        if self.data and not Path(self.data).is_file():
            raise ConfigError(f"--data={self.data}: " + ("is a folder" if Path(self.data).is_dir() else "no such file"))
        get_tiny_tasks(self.tasks)  # an unknown task name is refused here
        if self.memory_limit_gb is not None:
            check_range(self, 0, None, "memory_limit_gb", low_open=True)
        check_range(self, 0, None, "lora_r")
        if self.fsdp and self.lora_r > 0:  # LoRA's state is small: DDP holds it on every process
            raise ConfigError(f"--fsdp=true with --lora_r={self.lora_r}: FSDP is for full fine-tuning (--lora_r=0); "
                              "a LoRA run trains with DDP (drop --fsdp)")
        check_range(self, 0, None, "lora_alpha", low_open=True)
        check_range(self, 0, 0.99, "lora_dropout")
        for target in self.lora_targets.split(","):
            check_choice("lora_targets", target, LLADA_LINEARS)


# -----------------------------------------------------------------------------
# Device, precision, seeds


def pick_device(name):
    """"auto" -> cuda, then mps, then cpu; a named device is checked to exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device={name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device={name}: CUDA is not available on this machine; use --device=cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device={name}: MPS is not available on this machine; use --device=cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device={name!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


DTYPES = ("auto", "bfloat16", "float32")  # the --dtype choices of every entry point


def pick_dtype(name, device):
    """--dtype: "auto" -> "bfloat16" where this device runs bf16 matmuls faster than fp32, else "float32".

    GPUs with bf16 support run it two or more times faster than fp32. CPUs differ by far more: one
    with AVX512-BF16 or AMX ran bf16 2.2x faster than fp32 (bench.py: 403 vs 181 GFLOP/s), one with
    only AVX2 ran it 100x slower (1 vs 156 GFLOP/s), which turned a 23 s GRPO step into 260 s. So on
    a CPU a small timed probe decides. The two dtypes give slightly different numbers, not different
    behaviour; a run prints the dtype it chose, and --dtype=NAME pins it."""
    check_choice("dtype", name, DTYPES)
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "mps":
        return "bfloat16"
    return "bfloat16" if cpu_runs_bf16_fast() else "float32"


def bf16_speedup(n=256, repeats=3):
    """fp32 seconds / bf16 seconds of an n x n matmul on this CPU, the best of `repeats` each:
    above 1 where bf16 is faster (about 0.1 s on a CPU without fast bf16)."""
    def best_seconds(dtype):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up: the first call may pick or build a kernel
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)
    return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


@functools.cache
def cpu_runs_bf16_fast():
    """Whether a bf16 matmul beats an fp32 one by 1.5x on this CPU (measured once per process)."""
    return bf16_speedup() > 1.5


def autocast(device, dtype):
    """bf16 autocast (weights stay fp32, matmuls run in bf16), or a no-op for float32 ("auto": pick_dtype)."""
    dtype = pick_dtype(dtype, device)
    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def mix_seed(*parts):
    """One integer seed from several (the run's seed, a step, an index ...): each part is folded in
    as h * 1_000_003 + part, so (seed, step) pairs never collide for steps below a million."""
    h = 0
    for part in parts:
        h = h * 1_000_003 + part
    return h


def row_slices(n_rows, size, start=0):
    """Slices of at most `size` rows covering start..start + n_rows (size 0 or None: one slice of
    all): how a batch, or one process's share of it, is cut into micro-batches (gradient
    accumulation) or sampler calls. row_slices(4, 3, start=4) -> [slice(4, 7), slice(7, 8)]."""
    size = size or n_rows
    return [slice(i, min(i + size, start + n_rows)) for i in range(start, start + n_rows, size)]


# -----------------------------------------------------------------------------
# Optimizer and learning rate


def make_optimizer(model, cfg):
    """AdamW over the trainable parameters; weight decay on matrices only (not on norm weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=False)


def lr_at(step, cfg):
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio over decay_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.decay_steps or cfg.steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer, step, cfg):
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


# -----------------------------------------------------------------------------
# A run: start, the model to fine-tune, checkpoints, the metrics log


def start_run(cfg, stage):
    """Seed, pick the device, print the resolved config (with where each value came from: a preset,
    the command line, or the default). Returns the device.

    Under torchrun, join the process group first (distributed.setup: this process's GPU, or gloo on
    CPUs); only rank 0 prints from here on. Every process takes the same seed: the same initial
    weights, data order and noise everywhere (distributed.py: each then works on its own rows)."""
    device = distributed.setup(pick_device(cfg.device))
    distributed.print_only_on_main()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    processes = f" (rank 0 of {distributed.world()} processes)" if distributed.world() > 1 else ""
    print(f"stage {stage} on {device}{processes}; config:")
    origins = getattr(cfg, "origins", {})  # set by parse_config; absent for a config built in code
    for k, v in asdict(cfg).items():
        print(f"  {k} = {v!r}" + (f"   ({origins[k]})" if k in origins else ""))
    return device


def init_model(cfg, device, tok, stage, prompt_length=None):
    """Load the starting model (cfg.init: a .pt file or a Hugging Face-format folder) after its
    memory plan says the run fits, and wrap it with LoRA adapters if cfg.lora_r > 0."""
    plan_run(model_config(cfg.init), stage, cfg, device, weights_dtype=None, prompt_length=prompt_length)  # may refuse
    model, _ = load_any(cfg.init, device, tok=tok)  # checks that tok fits the model, then reads the weights
    if cfg.lora_r > 0:
        add_lora(model, targets=tuple(cfg.lora_targets.split(",")), r=cfg.lora_r, alpha=cfg.lora_alpha,
                 dropout=cfg.lora_dropout, seed=cfg.seed)
    model.checkpointing = cfg.checkpointing
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {model.num_params():,} parameters, {trainable:,} trainable, from {cfg.init}")
    return model


class MetricsLog:
    """out_dir/metrics.jsonl: one JSON object per logged step.

    Nothing is written until the first row, so a run that fails before its first step leaves an
    earlier log as it was. A resumed run appends; a fresh run first renames an existing log to
    metrics.jsonl.1 (then .2, ...), so no log is ever truncated. Under torchrun only rank 0 writes
    (a stage sums its metrics over the processes before it logs them)."""

    def __init__(self, out_dir, resume):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.append = resume

    def write(self, **row):
        if not distributed.is_main():
            return
        if not self.append:
            self._set_aside_old_log()
            self.append = True
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _set_aside_old_log(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            n = 1
            while self.path.with_name(f"{self.path.name}.{n}").exists():
                n += 1
            self.path.rename(self.path.with_name(f"{self.path.name}.{n}"))
