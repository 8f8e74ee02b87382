"""Shared pytest fixtures: the repo root on sys.path, ../shared (real data) when present, and the small
random models (and project checkpoints of them) that many tests build."""
import contextlib
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import save_checkpoint  # noqa: E402  (needs ROOT on sys.path)
from model import Config, Model  # noqa: E402

# ../shared sits beside the checkout on the developers' machines and in CI; a user's clone lacks it.
SHARED = Path(os.environ.get("NANO_D1_SHARED", ROOT.parent / "shared"))

# The small model's sizes: 2 layers of width 32 (2 heads), a 64-row vocabulary whose ids 60 and 61 are
# [MASK] and EOS. Fast enough for any test to run, train or sample it many times.
SMALL = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, mlp_hidden_size=64, vocab_size=64,
             embedding_size=64, max_sequence_length=128, mask_token_id=60, eos_token_id=61, pad_token_id=61)
# For a model that reads the tiny tokenizer's chat rows (training stages, eval, sample.py): Config's
# defaults, the tiny model's: 448 vocabulary rows, [MASK] 258, EOS 257, a context of 256 tokens.
TINY_TOKENIZER = {k: getattr(Config, k) for k in ("vocab_size", "embedding_size", "mask_token_id",
                                                  "eos_token_id", "pad_token_id", "max_sequence_length")}


@pytest.fixture
def shared():
    """Path of ../shared; skips the test (with the reason) when the folder is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"real data folder {SHARED}/data is absent (set NANO_D1_SHARED to point at it)")
    return SHARED


def make_tiny_model(seed=0, tokenizer=False, **config_overrides):
    """A small random model in eval mode: SMALL's sizes (with TINY_TOKENIZER's vocabulary and context if
    `tokenizer`), any Config field overridden; weights from init_weights(seed)."""
    config = {**SMALL, **(TINY_TOKENIZER if tokenizer else {}), **config_overrides}
    return Model(Config(**config)).init_weights(seed=seed).eval()


@pytest.fixture
def tiny_model():
    """The factory make(seed=0, tokenizer=False, **config_overrides) -> a small random Model (eval mode).

        model = tiny_model()                          # 2 x 32 wide, vocabulary 64, [MASK] 60, EOS 61
        model = tiny_model(seed=2, n_layers=1)        # any Config field
        model = tiny_model(tokenizer=True)            # 448 rows, [MASK] 258, EOS 257, context 256
    """
    return make_tiny_model


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """The factory write(name="init.pt", model=None, **config_overrides) -> the path of a slim project
    checkpoint (what --init and sample.py read) in the test's tmp_path, of `model`, or else of a small
    random model with the tiny tokenizer's vocabulary: make_tiny_model(tokenizer=True, **config_overrides)."""
    def write(name="init.pt", model=None, **config_overrides):
        if model is None:
            model = make_tiny_model(tokenizer=True, **config_overrides)
        path = tmp_path / name
        save_checkpoint({"model": model.state_dict(), "config": asdict(model.config), "stage": "pretrain"}, path)
        return path

    return write


@pytest.fixture
def record_inputs():
    """A context manager: `with record_inputs(model) as seen:` appends a copy of the input ids of every
    forward call of `model` to the list `seen` (a forward pre-hook, removed on leaving the block)."""
    @contextlib.contextmanager
    def record(model):
        seen = []

        def hook(module, args, kwargs):
            seen.append((args[0] if args else kwargs["input_ids"]).clone())

        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield seen
        finally:
            handle.remove()

    return record


@pytest.fixture
def user_error():
    """user_error(main, argv, program) -> the message of the one-line exit main(argv) makes on a user
    error (one_line_errors: "<program>: error: <message>", no traceback)."""
    def run(main, argv, program):
        with pytest.raises(SystemExit) as info:
            main(argv)
        text = str(info.value)
        assert text.startswith(f"{program}: error: ") and "\n" not in text, text
        return text.removeprefix(f"{program}: error: ")

    return run
