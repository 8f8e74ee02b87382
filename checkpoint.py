"""
Model files, in two formats, written atomically and read back with clear errors.

1. Project checkpoints: one `.pt` file per run (the training scripts write and resume these).

    from checkpoint import save_checkpoint, load_checkpoint, load_model
    save_checkpoint({"model": model.state_dict(), "config": ..., ...}, "out/ckpt.pt")
    model, ckpt = load_model("checkpoints/tiny-sft.pt")
    save_run(cfg, "sft", model, optimizer, step, noise_gen)   # a stage's out_dir/ckpt.pt
    step = restore(cfg, "sft", model, optimizer, noise_gen)   # --resume
    finish(cfg, "sft", model, optimizer, noise_gen, seconds, tok)   # the end: --export (.pt or folder)

   A checkpoint is a plain dict:
    model       state_dict with the official LLaDA key names (model.transformer.*)
    config      the model Config as a dict (official field names)
    stage       "pretrain" | "sft" | "grpo"; train_config: the stage's resolved config; init: its --init
    step, optimizer, rng       for --resume (absent from the slim checkpoints shipped in checkpoints/)
    lora_adapters              a LoRA run's adapters; a LoRA run on a Hugging Face folder keeps only
                               these (no "model": merging 8B weights into each checkpoint costs 16 GB)

2. Hugging Face-format directories, the layout of the official LLaDA-8B-Instruct release:
   config.json, and model.safetensors or shards listed in model.safetensors.index.json.

    from checkpoint import load_pretrained, save_pretrained, load_any
    model = load_pretrained("LLaDA-8B-Instruct", device="cuda")   # keeps the file's bf16
    save_pretrained(model, "out/tiny-hf")                          # config.json + model.safetensors
    model, tok = load_any(path)          # either format, with its tokenizer (sample.py uses this)

   Loading never holds two copies of the weights: the model is built on the meta device (no memory),
   then each tensor is read from its shard, moved to the target device and dtype, and put in place.
   `python bench.py --memory` measures the peak host memory this takes.
   safetensors is needed only for this format (pip install safetensors).
"""

import copy
import json
import os
import random
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

import distributed
from lora import lora_layers, merge_lora
from model import Config, Model
from tokenizer import Tokenizer


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another model."""


def save_checkpoint(obj, path):
    """torch.save to a temporary file, then rename: a crash mid-write never destroys the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _write_atomic(path, write):
    """write(tmp_path), then rename tmp_path to path: atomic on POSIX and Windows."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def check_checkpoint_path(path):
    """The path of an existing project .pt file, or a CheckpointError that says what is there instead."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a project .pt file (a Hugging Face-format "
                              "LLaDA folder is read by checkpoint.load_pretrained)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def check_model_path(path, key="model"):
    """A model to start from or evaluate: a project .pt file, or a Hugging Face-format LLaDA folder
    with config.json, its weights and tokenizer.json; else a CheckpointError naming what is missing
    (before anything is loaded)."""
    path = Path(path)
    if path.is_file():
        return  # a .pt file: load_checkpoint says if it is not one
    if not path.is_dir():
        raise CheckpointError(f"--{key}={path}: no such file or folder (expected a project .pt file or "
                              "a LLaDA folder in Hugging Face format)")
    for name, what in (("config.json", "the model config"), ("tokenizer.json", "the tokenizer")):
        if not (path / name).is_file():
            raise CheckpointError(f"--{key}={path}: the folder has no {name} ({what}); a LLaDA folder in "
                                  "Hugging Face format holds config.json, tokenizer.json and *.safetensors")
    _shard_list(path)  # refuses a folder without weights


def load_checkpoint(path, map_location="cpu", adapters_only=False, mmap=False):
    """Read a project checkpoint, turning torch's deep errors into one clear message.

    adapters_only: also accept the checkpoint of a LoRA run on a Hugging Face-format model, which
    holds the adapters and the base folder's path but no merged weights (--resume reads it).
    mmap: map the file instead of reading it; its pages are read when a tensor is first used."""
    path = check_checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # a truncated zip, garbage bytes, a pickle with foreign objects ...
        # torch's message suggests weights_only=False, i.e. running the file's code: never for a file
        # we did not write. Name the problem, not that advice.
        raise CheckpointError(f"checkpoint {path} is not a readable nano-d1 checkpoint: corrupt, truncated "
                              f"or another kind of file ({type(e).__name__})") from None
    if isinstance(ckpt, dict) and "model" not in ckpt and "lora_adapters" in ckpt and not adapters_only:
        raise CheckpointError(f"checkpoint {path} holds only the LoRA adapters of a run on {ckpt.get('init')} "
                              "(no merged weights); its run's --export=DIR writes the merged model")
    for key in ("config",) if adapters_only else ("model", "config"):
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


def check_same_config(saved, config, source):
    """Refuse a checkpoint whose model config (a dict) differs from `config`, naming the fields."""
    diffs = [f"{k}={v} (expected {getattr(config, k, None)})" for k, v in saved.items()
             if k != "attn_impl" and getattr(config, k, None) != v]
    if diffs:
        raise CheckpointError(f"{source} is for a different model config: {', '.join(diffs)}")


def load_model(path, device="cpu", **config_overrides):
    """Build the model a checkpoint describes and load its weights. Returns (model, checkpoint)."""
    ckpt = load_checkpoint(path)
    try:
        config = Config(**{**ckpt["config"], **config_overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {e}") from None
    model = Model(config)
    check_state_dict(model, ckpt["model"], f"checkpoint {path}")
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


# -----------------------------------------------------------------------------
# Hugging Face format: config.json + model.safetensors, or shards + model.safetensors.index.json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # {"weight_map": {key: shard file name}, "metadata": ...}
# safetensors' dtype names -> torch. Float weights only: an int8 or fp8 file is a quantised checkpoint,
# whose scales this model has no place for.
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _safetensors():
    """The safetensors package, imported here only, so the rest of the project runs without it."""
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise ImportError("Hugging Face-format checkpoints need the safetensors package: "
                          "pip install safetensors") from None
    return safetensors


def load_pretrained(path, device="cpu", dtype=None, **config_overrides):
    """Load a Hugging Face-format LLaDA directory. Returns a Model on `device`.

    dtype: None keeps the file's dtype (bf16 for LLaDA-8B); torch.float32 / bfloat16 / float16, or
    their names, convert each tensor as it is loaded. config_overrides: e.g. attn_impl="eager".
    Every name, shape and dtype is checked from the file headers before any weight is read, so a
    bad checkpoint fails in a second, not after reading 16 GB."""
    directory = Path(path)
    dtype = _as_dtype(dtype)
    config = _read_config(directory, config_overrides)
    with torch.device("meta"):  # shapes only, no memory: the real tensors arrive one at a time below
        model = Model(config)
    headers = _read_headers(directory)  # key -> (file, shape, safetensors dtype name)
    check_state_dict(model, {k: torch.empty(shape, device="meta") for k, (_, shape, _) in headers.items()},
                     f"checkpoint {directory}")
    _check_dtypes(headers, dtype, directory)

    for file in sorted({file for file, _, _ in headers.values()}):
        with _open_shard(file) as f:
            for key in f.keys():
                # One tensor at a time. On the CPU, in the file's dtype, get_tensor is a copy-on-write
                # view of the memory-mapped file: pages are read on first use, never copied. Moving
                # before converting keeps a float32 copy of bf16 weights off the host for a GPU.
                tensor = f.get_tensor(key).to(device)
                tensor = tensor if dtype is None else tensor.to(dtype)
                # assign=True swaps the meta tensor for this one (copying into a meta tensor would do
                # nothing), keeping requires_grad as it was.
                model.load_state_dict({key: tensor}, strict=False, assign=True)

    # check_state_dict has matched every key, so this only fires if the model gains a tensor that no
    # checkpoint holds (a buffer, say): better an error now than "meta tensor" deep in a forward pass.
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"checkpoint {directory} left {len(left)} tensors unloaded, e.g. {left[0]}")
    return model


def _as_dtype(dtype):
    """None, a float torch.dtype, or its name ("bfloat16") -> None or the torch.dtype."""
    if dtype is None or dtype in FLOAT_DTYPES.values():
        return dtype
    named = {str(t).removeprefix("torch."): t for t in FLOAT_DTYPES.values()}
    if dtype in named:
        return named[dtype]
    raise ValueError(f"dtype={dtype!r}; expected None (keep the file's) or one of {sorted(named)}")


def _read_config(directory, overrides):
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory (expected a Hugging Face-format LLaDA "
                              "folder: config.json and model.safetensors or its shards)")
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} has no config.json; is it a Hugging Face-format LLaDA folder?")
    config = Config.from_pretrained(directory)
    return Config(**{**asdict(config), **overrides})


def _shard_list(directory):
    """{shard path: the keys the index maps to it}; for a single model.safetensors, {path: None}."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = {}
            for key, name in weight_map.items():
                shards.setdefault(directory / name, set()).add(key)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid index (need a 'weight_map' of tensor name -> "
                                  f"shard file): {type(e).__name__}: {e}") from None
        return shards
    if (directory / SINGLE_FILE).is_file():
        return {directory / SINGLE_FILE: None}
    raise CheckpointError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")


@contextmanager
def _open_shard(file):
    """safe_open(file), turning safetensors' errors (bad header, truncated data) into one
    CheckpointError that names the file instead of a Rust error message."""
    st = _safetensors()
    try:
        handle = st.safe_open(file, framework="pt")
    except st.SafetensorError as e:
        raise CheckpointError(f"{file} is corrupt or truncated and cannot be read ({e})") from None
    with handle as f:
        yield f


def _read_headers(directory):
    """Names, shapes and dtypes of every tensor, from the headers alone: {key: (file, shape, dtype)}.
    With an index, each shard must hold exactly the keys the index maps to it."""
    headers = {}
    for file, mapped in _shard_list(directory).items():
        if not file.is_file():
            raise CheckpointError(f"shard {file.name} is missing from {directory} ({INDEX_FILE} maps "
                                  f"{len(mapped)} tensors to it, e.g. {min(mapped)})")
        with _open_shard(file) as f:
            keys = set(f.keys())
            if mapped is not None and keys != mapped:
                wrong = ([f"{k} is mapped to it but not in it" for k in sorted(mapped - keys)[:3]]
                         + [f"{k} is in it but mapped elsewhere" for k in sorted(keys - mapped)[:3]])
                raise CheckpointError(f"{directory / INDEX_FILE} does not match shard {file.name}: "
                                      + "; ".join(wrong))
            for key in keys:
                if key in headers:
                    raise CheckpointError(f"{key} is stored twice: in {headers[key][0].name} and {file.name}")
                info = f.get_slice(key)
                headers[key] = (file, tuple(info.get_shape()), info.get_dtype())
    return headers


def _check_dtypes(headers, dtype, directory):
    for key, (file, _, name) in headers.items():
        if name not in FLOAT_DTYPES:
            raise CheckpointError(f"{file}: tensor {key} has dtype {name}; only {', '.join(FLOAT_DTYPES)} "
                                  "weights are supported (quantised checkpoints are not)")
    found = sorted({name for _, _, name in headers.values()})
    if dtype is None and len(found) > 1:
        raise CheckpointError(f"checkpoint {directory} mixes dtypes {found}; pass dtype= to load it as one")


def save_pretrained(model, directory, max_shard_size=5 * 10**9, state=None):
    """Write `model` as a Hugging Face-format directory: config.json (official field names) and
    model.safetensors, or, past max_shard_size bytes, shards model-0000i-of-0000n.safetensors listed
    in model.safetensors.index.json. Tensors keep the model's dtype. Files of an earlier save to the
    same directory that this save does not rewrite are removed (a stale index would be read first).
    state: the weights to write (default model.state_dict(); a sharded model's, gathered)."""
    save_file = _safetensors().torch.save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _weight_files(directory)
    state = model.state_dict() if state is None else state
    groups = _plan_shards(state, max_shard_size)
    names = ([SINGLE_FILE] if len(groups) == 1 else
             [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])

    for name, keys in zip(names, groups):
        # One shard in host memory at a time; safetensors wants contiguous CPU tensors.
        shard = {k: state[k].detach().to("cpu").contiguous() for k in keys}
        _write_atomic(directory / name, lambda tmp: save_file(shard, tmp, metadata={"format": "pt"}))
    written = {directory / name for name in names}
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: name for name, keys in zip(names, groups) for k in keys}}
        write_json(directory / INDEX_FILE, index)
        written.add(directory / INDEX_FILE)
    dtype = next(iter(state.values())).dtype
    config = {**model.config.to_dict(), "torch_dtype": str(dtype).removeprefix("torch.")}
    write_json(directory / "config.json", config)
    for stale in previous - written:
        stale.unlink()


def _plan_shards(state, max_bytes):
    """Cut the keys, in order, into groups of at most max_bytes (a bigger tensor gets its own)."""
    groups, size = [[]], 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    return groups


def _weight_files(directory):
    """The weight files (and index) already in a directory."""
    files = {directory / SINGLE_FILE, directory / INDEX_FILE}
    if (directory / INDEX_FILE).is_file():
        try:
            files |= set(_shard_list(directory))
        except CheckpointError:
            pass  # an unreadable old index: its shards cannot be known, leave them
    return {f for f in files if f.is_file()}


def write_json(path, obj):
    """JSON to path, atomically (a crash mid-write leaves the old file)."""
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def load_any(path, device="cpu", dtype=None, tok=None):
    """Open a model and its tokenizer from either format. Returns (model, tokenizer).
    tok: the path's tokenizer if the caller has already loaded it (LLaDA's takes seconds).

    A directory is Hugging Face format, with its tokenizer.json; a folder written by save_pretrained
    from the tiny model has none, and gets the tiny tokenizer. A file is a project .pt
    checkpoint (the tiny tokenizer). Either way the tokenizer's mask and EOS ids must be the config's:
    a wrong pairing would otherwise sample garbage without any error."""
    path = Path(path)
    tok = tok or load_tokenizer(path)
    check_tokenizer_fits(model_config(path), tok, path)  # before reading any weights
    if path.is_dir():
        model = load_pretrained(path, device, dtype)
    else:
        model, _ = load_model(path, device)
        if dtype is not None:
            model = model.to(dtype=_as_dtype(dtype))
    return model, tok


def load_tokenizer(path):
    """The tokenizer of a model path: a folder's tokenizer.json, else (a .pt file, or a folder that
    save_pretrained wrote from the tiny model) the tiny tokenizer."""
    path = Path(path)
    return Tokenizer.from_pretrained(path) if (path / "tokenizer.json").is_file() else Tokenizer.tiny()


def model_config(path):
    """The model Config of a .pt checkpoint or a Hugging Face folder, without loading the weights."""
    path = Path(path)
    if path.is_dir():
        return _read_config(path, {})
    saved = load_checkpoint(path)["config"]
    try:
        return Config(**saved)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {e}") from None


def check_tokenizer_fits(config, tok, path):
    """The tokenizer's mask and EOS ids must be the config's, and its ids fit the embedding."""
    if (tok.mask_id, tok.eos_id) != (config.mask_token_id, config.eos_token_id) or tok.n_vocab > config.embedding_size:
        which = "tokenizer.json" if (Path(path) / "tokenizer.json").is_file() else \
            "the tiny tokenizer (no tokenizer.json found)"
        raise CheckpointError(f"{path}: {which} does not fit the model: mask/eos ids "
                              f"{tok.mask_id}/{tok.eos_id} and {tok.n_vocab} ids, but the config has "
                              f"{config.mask_token_id}/{config.eos_token_id} and {config.embedding_size} rows")


# -----------------------------------------------------------------------------
# A training run's checkpoint: write it, resume from it, export at the end (the stages call these)


def adapters_only(cfg, model):
    """A LoRA run on a Hugging Face-format model keeps only its adapters in ckpt.pt (the base is
    cfg.init; merging 8B weights into every checkpoint would cost 16 GB each): --export=DIR merges."""
    return bool(lora_layers(model)) and Path(cfg.init).is_dir()


def save_run(cfg, stage, model, optimizer, step, noise_gen, path=None, slim=False):
    """Write a checkpoint atomically. "model" holds plain official weights (LoRA merged in), so
    eval.py and the next stage read it directly, except for a LoRA run on a folder (adapters_only);
    resume state (optimizer, RNG, adapters) unless slim.

    Under torchrun every process calls this; rank 0 writes (model, optimizer and RNG states are the
    same on every process, so one file resumes a run on any number of them) and the others wait for
    it. `model` is the plain model, not its DDP wrapper (whose keys start with "module."). Under FSDP
    (--fsdp) every process first sends rank 0 its shards (distributed.full_state): the file is the
    one an unsharded run writes."""
    sharded = distributed.is_sharded(model)
    if sharded:  # a collective: every process takes part
        weights, optimizer_state = distributed.full_state(model, None if slim else optimizer)
    if distributed.is_main():
        ckpt = {"config": asdict(model.config), "stage": stage, "train_config": asdict(cfg), "step": step,
                "init": getattr(cfg, "init", None)}  # pretraining starts from no model
        if sharded:  # (no LoRA under FSDP: FinetuneConfig refuses it)
            ckpt["model"] = weights
        elif not adapters_only(cfg, model):
            ckpt["model"] = merge_lora(copy.deepcopy(model)).state_dict() if lora_layers(model) else model.state_dict()
        if not slim:
            ckpt.update(optimizer=optimizer_state if sharded else optimizer.state_dict(), rng=rng_state(noise_gen))
            if lora_layers(model):
                ckpt["lora_adapters"] = {k: v for k, v in model.state_dict().items() if ".lora_" in k}
        save_checkpoint(ckpt, path or Path(cfg.out_dir) / "ckpt.pt")
    distributed.barrier()


def restore(cfg, stage, model, optimizer, noise_gen):
    """--resume: load out_dir/ckpt.pt into model and optimizer. Returns the step to continue from.

    The checkpoint must come from the same stage, starting model and model config; with LoRA, the
    base weights are re-read from cfg.init and only the adapters come from the checkpoint. Under FSDP
    every process maps the whole file (one copy a machine) and keeps its own shard of each tensor."""
    path = Path(cfg.out_dir) / "ckpt.pt"
    sharded = distributed.is_sharded(model)
    ckpt = load_checkpoint(path, adapters_only=True, mmap=sharded)
    if ckpt.get("stage") != stage:
        raise CheckpointError(f"{path} is a {ckpt.get('stage')!r} checkpoint, not {stage!r}")
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{path} has no optimizer state (a slim export?); cannot resume from it")
    if ckpt.get("init") != getattr(cfg, "init", None) and "init" in ckpt:
        raise CheckpointError(f"{path} continues a run that started from --init={ckpt['init']}, not {cfg.init}")
    check_same_config(ckpt["config"], model.config, path)
    if sharded:
        distributed.load_full_state(model, optimizer, ckpt["model"], ckpt["optimizer"])
    else:
        if "lora_adapters" in ckpt:
            model.load_state_dict(ckpt["lora_adapters"], strict=False)
        else:
            model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"], noise_gen)
    print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"]


def finish(cfg, stage, model, optimizer, noise_gen, seconds, tok):
    """The end of a run: --export writes the weights without optimizer state, as a .pt file or as a
    Hugging Face-format folder (config.json, safetensors, tokenizer.json) that --init, eval.py
    --model and sample.py --model open. LoRA adapters are merged in (in place: the run is over)."""
    print(f"done: {cfg.steps} steps in {seconds:.0f}s; checkpoint {Path(cfg.out_dir) / 'ckpt.pt'}")
    if not cfg.export:
        return
    if Path(cfg.export).suffix == ".pt":
        save_run(cfg, stage, model, optimizer, cfg.steps, noise_gen, path=cfg.export, slim=True)
    else:
        weights = distributed.full_state(model)[0] if distributed.is_sharded(model) else None  # all processes
        if distributed.is_main():  # under torchrun: rank 0 writes, the others wait
            save_pretrained(merge_lora(model), cfg.export, state=weights)
            tok.save_pretrained(cfg.export)
        distributed.barrier()
    print(f"exported the weights (no optimizer state) to {cfg.export}")


def rng_state(noise_gen):
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "noise": noise_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state, noise_gen):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    noise_gen.set_state(state["noise"])
    if state["cuda"]:  # the GPUs this machine has (a run may resume on fewer)
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
