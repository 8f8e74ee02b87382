"""Hugging Face-format LLaDA directories: load, save, reload, and a clear error for each broken one.

The directories are written here by hand, from the official release's layout (official key names and config
fields, safetensors files, an index with shard names of our choosing), not by save_pretrained, so
the loader is tested against the format rather than against itself."""
import json
import sys

import pytest
import torch

import checkpoint
from checkpoint import CheckpointError, load_any, load_pretrained, save_pretrained
from model import Config, Model
from tokenizer import BOS, EOS, EOT, END_HEADER, MASK, START_HEADER, Tokenizer, bytes_to_unicode

safetensors_torch = pytest.importorskip("safetensors.torch")

D, F, V, LAYERS = 64, 96, 128, 2


def official_config(**changes):
    """config.json as LLaDA-8B-Instruct has it (its released config.json), at a small size. Fields this
    code does not use (alibi_bias_max, init_device, precision, ...) are there on purpose."""
    return {"activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
            "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
            "block_type": "llama", "d_model": D,
            "embedding_size": V, "eos_token_id": 125, "include_bias": False, "include_qkv_bias": False,
            "init_device": "meta", "input_emb_norm": False, "layer_norm_type": "rms", "mask_token_id": 126,
            "max_sequence_length": 64, "mlp_hidden_size": F, "mlp_ratio": 4, "model_type": "llada",
            "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4, "n_layers": LAYERS,
            "pad_token_id": 125, "precision": "amp_bf16", "rms_norm_eps": 1e-5, "rope": True,
            "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "use_cache": False,
            "vocab_size": V, "weight_tying": False, **changes}


def official_weights(dtype=torch.bfloat16, seed=0):
    """Random tensors under the official names and shapes (the official checkpoint's layout)."""
    shapes = {"model.transformer.wte.weight": (V, D), "model.transformer.ln_f.weight": (D,),
              "model.transformer.ff_out.weight": (V, D)}
    for i in range(LAYERS):
        b = f"model.transformer.blocks.{i}."
        shapes.update({b + "attn_norm.weight": (D,), b + "ff_norm.weight": (D,), b + "ff_proj.weight": (F, D),
                       b + "up_proj.weight": (F, D), b + "ff_out.weight": (D, F)})
        shapes.update({b + f"{name}.weight": (D, D) for name in ("q_proj", "k_proj", "v_proj", "attn_out")})
    g = torch.Generator().manual_seed(seed)
    # Norm weights near 1, matrices small: logits stay finite and differ from position to position.
    return {k: (torch.randn(s, generator=g) * 0.1 + (len(s) == 1)).to(dtype) for k, s in shapes.items()}


def write_dir(path, weights, config=None, shards=None, index_map=None):
    """A LLaDA directory. shards=None: one model.safetensors. shards=n: n files with names unlike
    Hugging Face's (the loader must read them from the index), listed in model.safetensors.index.json.
    index_map: replaces the index's weight_map (to break it)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(official_config() if config is None else config))
    if shards is None:
        safetensors_torch.save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
        return path
    weight_map = {k: f"part-{j % shards}.safetensors" for j, k in enumerate(weights)}
    for name in set(weight_map.values()):
        safetensors_torch.save_file({k: t for k, t in weights.items() if weight_map[k] == name}, path / name)
    index = {"metadata": {"total_size": 0}, "weight_map": index_map or weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def logits(model, seed=0):
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids)


# -----------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shards", [None, 3])
def test_load_save_load_gives_identical_logits(tmp_path, dtype, shards):
    weights = official_weights(dtype)
    model = load_pretrained(write_dir(tmp_path / "official", weights, shards=shards))
    assert model.config == Config.from_dict(official_config())
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert all(t.dtype == dtype and t.device.type == "cpu" for t in loaded.values())  # the file's dtype
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert all(p.requires_grad for p in model.parameters())  # trainable, as a freshly built model

    save_pretrained(model, tmp_path / "saved")
    again = load_pretrained(tmp_path / "saved")
    assert torch.equal(logits(again), logits(model))
    assert logits(model).dtype == dtype and torch.isfinite(logits(model)).all()


def test_dtype_argument_converts_each_tensor(tmp_path):
    weights = official_weights(torch.bfloat16)
    path = write_dir(tmp_path, weights, shards=2)
    for dtype in (torch.float32, "float16"):
        model = load_pretrained(path, dtype=dtype)
        expected = torch.float16 if dtype == "float16" else dtype
        sd = model.state_dict()
        assert all(t.dtype == expected and torch.equal(t, weights[k].to(expected)) for k, t in sd.items())
    with pytest.raises(ValueError, match="dtype=torch.int8"):
        load_pretrained(path, dtype=torch.int8)


def test_tiny_model_saved_this_way_reopens_identically(tmp_path, tiny_model):
    model = tiny_model(tokenizer=True)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    written = json.loads((tmp_path / "config.json").read_text())
    for key in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "embedding_size", "mask_token_id",
                "rope_theta"):
        assert written[key] == getattr(model.config, key)  # official field names, as other tooling reads them
    assert written["weight_tying"] is False and written["torch_dtype"] == "float32"
    # The file itself: official key names, the model's dtype, nothing else.
    assert safetensors_torch.load_file(tmp_path / "model.safetensors").keys() == model.state_dict().keys()

    again = load_pretrained(tmp_path)
    assert again.config == model.config
    ids = torch.randint(0, 262, (2, 20))
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_sharded_writing_and_stale_files(tmp_path):
    model = load_pretrained(write_dir(tmp_path / "official", official_weights()))
    out = tmp_path / "out"
    save_pretrained(model, out, max_shard_size=20_000)  # ~10 kB to 16 kB tensors: several shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard_names = set(index["weight_map"].values())
    assert len(shard_names) > 3 and index["weight_map"].keys() == model.state_dict().keys()
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert index["metadata"]["total_size"] == nbytes
    for name in shard_names:  # each shard within the limit, unless it holds a single bigger tensor
        tensors = safetensors_torch.load_file(out / name)
        assert len(tensors) == 1 or sum(t.numel() * t.element_size() for t in tensors.values()) <= 20_000
    assert torch.equal(logits(load_pretrained(out)), logits(model))

    # Saving unsharded into the same folder removes the old shards and index (the index would win).
    save_pretrained(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(logits(load_pretrained(out)), logits(model))


# -----------------------------------------------------------------------------
# broken directories: one clear error each


def break_dir(tmp_path, how):
    """A directory broken in one way; returns (path, regex of the expected message)."""
    w = official_weights()
    key = "model.transformer.ln_f.weight"
    if how == "no config.json":
        path = write_dir(tmp_path, w)
        (path / "config.json").unlink()
        return path, "has no config.json"
    if how == "no weights":
        (tmp_path / "config.json").write_text(json.dumps(official_config()))
        return tmp_path, "neither model.safetensors nor model.safetensors.index.json"
    if how == "missing shard":
        path = write_dir(tmp_path, w, shards=3)
        (path / "part-1.safetensors").unlink()
        return path, r"shard part-1.safetensors is missing .*maps \d+ tensors to it"
    if how == "missing key":
        return write_dir(tmp_path, {k: t for k, t in w.items() if k != key}), f"missing {key}"
    if how == "unexpected key":
        extra = "model.transformer.blocks.0.attn_out.bias"
        return write_dir(tmp_path, {**w, extra: torch.zeros(D)}, shards=2), f"unexpected {extra}"
    if how == "wrong shape":
        w["model.transformer.wte.weight"] = torch.zeros(100, D, dtype=torch.bfloat16)
        return (write_dir(tmp_path, w),
                r"model.transformer.wte.weight: \(100, 64\) in file, \(128, 64\) expected")
    if how in ("truncated", "garbage"):
        path = write_dir(tmp_path, w, shards=2)
        shard = path / "part-1.safetensors"
        data = shard.read_bytes()
        shard.write_bytes(data[:-100] if how == "truncated" else b"\x00" * 7 + data[7:])
        return path, r"part-1.safetensors is corrupt or truncated"
    if how == "int8 tensor":
        w[key] = torch.ones(D, dtype=torch.int8)
        return write_dir(tmp_path, w), f"{key} has dtype I8; only F32, F16, BF16"
    if how == "mixed dtypes":
        w[key] = w[key].float()
        return write_dir(tmp_path, w), r"mixes dtypes \['BF16', 'F32'\]; pass dtype="
    if how == "index names the wrong shard":
        right = {k: f"part-{j % 2}.safetensors" for j, k in enumerate(w)}
        other = "part-1.safetensors" if right[key] == "part-0.safetensors" else "part-0.safetensors"
        wrong = {**right, key: other}
        return (write_dir(tmp_path, w, shards=2, index_map=wrong),
                f"index.json does not match shard part-\\d.safetensors: {key} is")
    if how == "index without weight_map":
        path = write_dir(tmp_path, w, shards=2)
        (path / "model.safetensors.index.json").write_text('{"metadata": {}}')
        return path, "not a valid index"
    raise AssertionError(how)


BROKEN = ["no config.json", "no weights", "missing shard", "missing key", "unexpected key", "wrong shape",
          "truncated", "garbage", "int8 tensor", "mixed dtypes", "index names the wrong shard",
          "index without weight_map"]


@pytest.mark.parametrize("how", BROKEN)
def test_broken_directory_gives_a_clear_error(tmp_path, how):
    path, message = break_dir(tmp_path, how)
    with pytest.raises(CheckpointError, match=message) as info:
        load_pretrained(path)
    assert isinstance(info.value, ValueError)
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert "\n" not in str(info.value)  # one line, no library traceback pasted in


def test_mixed_dtypes_load_with_an_explicit_dtype(tmp_path):
    path, _ = break_dir(tmp_path, "mixed dtypes")
    model = load_pretrained(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_tensor_left_on_meta_is_an_error(tmp_path, monkeypatch):
    """A tensor no checkpoint holds (here a non-persistent buffer, as a rotary cache would be) stays
    on the meta device after loading: the loader must say so rather than fail later in forward."""
    class WithCache(Model):
        def __init__(self, config):
            super().__init__(config)
            self.register_buffer("rope_cache", torch.zeros(4), persistent=False)

    monkeypatch.setattr(checkpoint, "Model", WithCache)
    with pytest.raises(CheckpointError, match="left 1 tensors unloaded, e.g. rope_cache"):
        checkpoint.load_pretrained(write_dir(tmp_path, official_weights()))


def test_without_safetensors_the_message_says_how_to_install_it(tmp_path, monkeypatch):
    path = write_dir(tmp_path, official_weights())
    monkeypatch.setitem(sys.modules, "safetensors", None)  # makes `import safetensors` fail
    with pytest.raises(ImportError, match="pip install safetensors"):
        load_pretrained(path)


# -----------------------------------------------------------------------------
# load_any: either format, with a fitting tokenizer


def write_tokenizer_json(path, special_ids):
    """A byte-level tokenizer.json without merges: ids 0..255 the bytes, then the special tokens."""
    spec = {"added_tokens": [{"id": i, "content": s, "special": True} for s, i in special_ids.items()],
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"\s+|\S+"}, "behavior": "Isolated"},
                {"type": "ByteLevel", "use_regex": False, "add_prefix_space": False}]},
            "model": {"type": "BPE", "vocab": {c: i for i, c in enumerate(bytes_to_unicode().values())},
                      "merges": []}}
    (path / "tokenizer.json").write_text(json.dumps(spec))


def test_load_any_opens_both_formats_with_their_tokenizer(tmp_path, tiny_model, tiny_checkpoint):
    # A 272-row model (room for 256 bytes + 6 special tokens) whose special ids are not the tiny ones.
    config = official_config(vocab_size=272, embedding_size=272, eos_token_id=263, pad_token_id=263,
                             mask_token_id=260)
    weights = official_weights()
    for key in ("model.transformer.wte.weight", "model.transformer.ff_out.weight"):
        weights[key] = torch.randn(272, D).to(torch.bfloat16)
    path = write_dir(tmp_path / "hf", weights, config=config)
    write_tokenizer_json(path, {EOT: 256, BOS: 257, START_HEADER: 258, END_HEADER: 259, MASK: 260, EOS: 263})
    model, tok = load_any(path, dtype="float32")
    assert (tok.mask_id, tok.eos_id, tok.eot_id) == (260, 263, 256)  # from the file, not the tiny ids
    assert next(model.parameters()).dtype == torch.float32

    tiny = tiny_model(tokenizer=True)
    model, tok = load_any(tiny_checkpoint("ckpt.pt", tiny))
    assert tok.mask_id == model.config.mask_token_id == 258 and torch.equal(logits(model), logits(tiny))
    save_pretrained(tiny, tmp_path / "tiny-hf")  # no tokenizer.json: the tiny byte tokenizer fits
    model, tok = load_any(tmp_path / "tiny-hf", dtype=torch.bfloat16)
    assert tok.n_vocab == Tokenizer.tiny().n_vocab and next(model.parameters()).dtype == torch.bfloat16


def test_load_any_refuses_a_tokenizer_that_does_not_fit(tmp_path):
    path = write_dir(tmp_path, official_weights())  # mask id 126: not the tiny tokenizer's 258
    with pytest.raises(CheckpointError, match=r"the tiny tokenizer \(no tokenizer.json found\) does not fit the "
                                              "model: mask/eos ids 258/257 and 437 ids, but the config has "
                                              "126/125 and 128 rows"):
        load_any(path)
