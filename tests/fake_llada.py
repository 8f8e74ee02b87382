"""A small random LLaDA folder in the official Hugging Face layout, and small data files in d1's
published formats: what an end-to-end test runs the whole pipeline on (SFT -> export -> diffu-GRPO ->
export -> eval), on a CPU, in seconds. A test helper, not a test file (tests/test_fake_llada.py tests it).

    from fake_llada import make_llada_folder, write_gsm8k, write_s1k, write_countdown, write_sudoku
    folder = make_llada_folder(tmp_path / "llada")     # config.json, 2 shards + index, tokenizer.json
    model, tok = checkpoint.load_any(folder)           # as the real LLaDA-8B-Instruct folder loads
    write_gsm8k(tmp_path / "gsm8k.jsonl", 8)           # {"question", "answer": "...\\n#### N"}

The folder, file by file, as in GSAI-ML/LLaDA-8B-Instruct:
    config.json                      LLaDA's released field list and values (LLADA_CONFIG), with small
                                     sizes; the vocabulary padded to a multiple of 64 rows, as LLaDA's
    model-0000i-of-0000n.safetensors random bf16 weights (model.init_weights(seed)), official key names
    model.safetensors.index.json     {"metadata": {"total_size"}, "weight_map": {key: shard}}
    tokenizer.json                   a byte-level BPE in LLaDA's id layout (below), NFC normaliser
    tokenizer_config.json, special_tokens_map.json   what transformers reads: chat template, roles

The tokenizer's ids follow LLaDA's: 0..255 the bytes in GPT-2 order (space 220, "\\n" 198), then the
merges, then the added tokens (LLaDA's special and chat tokens and two more of its added tokens). The
merges are trained here (tokenizer.train_bpe, 0.2 s) on d1's prompts and rows like the files below, so
d1 RL prompts are short: GSM8K 68-95 tokens, Countdown ~155, Sudoku 195 (these two at their floor:
every word one token, every digit one). Differences from the real tokenizer: 400 merges instead of
~126,000, and the pre-tokenizer regex is tokenizer.TINY_PATTERN, not LLaDA's: training runs in Python,
whose `re` has no \\p{L} classes or possessive quantifiers, and the file must cut text the way
training did. A folder takes ~0.3 s to build (0.03 s once the merges are trained in the process).
"""
import csv
import functools
import json
import random
import re
from pathlib import Path

import torch

from model import Config, Model
from tasks_d1 import (COUNTDOWN_EVAL_PROMPT, COUNTDOWN_RL_QUESTION, GSM8K_EVAL_PROMPT, MATH_EVAL_PROMPT,
                      SUDOKU_SYSTEM_PROMPT, SYSTEM_PROMPT)
from tasks_tiny import sudoku_grids
from tokenizer import (BOS, EOS, EOT, END_HEADER, MASK, SPECIAL_TOKENS, START_HEADER, TINY_PATTERN, Tokenizer,
                       bytes_to_unicode, train_bpe)

# LLaDA-8B-Instruct's config.json as released (Hugging Face GSAI-ML/LLaDA-8B-Instruct), every field;
# make_llada_folder overrides the sizes and the token ids.
LLADA_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096,
    "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
    "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16",
    "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "use_cache": False, "vocab_size": 126464,
    "weight_tying": False, "torch_dtype": "bfloat16",
}

# The added tokens, after the merges, in LLaDA's order (there: 126080 BOS, 126081 EOS, 126336 mask,
# 126340 <role>, 126341 </role>, 126346..126348 the chat tokens; all flagged special).
ADDED_TOKENS = (BOS, EOS, MASK, "<role>", "</role>", START_HEADER, END_HEADER, EOT)
assert set(SPECIAL_TOKENS) <= set(ADDED_TOKENS)

# A Llama-3 chat template (LLaDA's is Llama-3 style), for transformers' apply_chat_template, which reads
# it from tokenizer_config.json. For one user message it renders tokenizer.chat_prompt's text.
CHAT_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
                 "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
                 "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                 "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
                 "{% endif %}")
ROLES = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "mask_token": MASK}


def make_llada_folder(path, d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128, max_sequence_length=1024,
                      n_merges=400, seed=0, shards=2) -> Path:
    """Write a random LLaDA at `path` (created) in the official layout; returns the path.

    The weights depend on `seed`; the tokenizer only on n_merges (trained once per process)."""
    path = Path(path)
    tok = fake_tokenizer(n_merges)
    tok.save_pretrained(path)  # creates the folder
    for stale in [*path.glob("model*.safetensors"), path / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)  # an earlier call's weights (a stale index would be read first)
    _write_json(path / "tokenizer_config.json", {**ROLES, "chat_template": CHAT_TEMPLATE,
                                                 "tokenizer_class": "PreTrainedTokenizerFast",
                                                 "model_max_length": max_sequence_length})
    _write_json(path / "special_tokens_map.json", ROLES)

    rows = -(-tok.n_vocab // 64) * 64  # LLaDA pads its 126,349 ids to 126,464 rows (a multiple of 64)
    config = {**LLADA_CONFIG, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads,
              "mlp_hidden_size": mlp_hidden_size, "max_sequence_length": max_sequence_length,
              "vocab_size": rows, "embedding_size": rows,
              "mask_token_id": tok.mask_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    model = Model(Config.from_dict(config)).init_weights(seed=seed).to(torch.bfloat16)
    _write_shards(model.state_dict(), path, shards)
    _write_json(path / "config.json", config)
    return path


def _write_shards(state, path, shards):
    """The tensors, in order, cut into `shards` files named as Hugging Face names them, and the index
    (one model.safetensors without an index when shards == 1). Written directly with safetensors, not
    by checkpoint.save_pretrained, so the loader is tested against the format, not against itself."""
    from safetensors.torch import save_file  # only the callers that build a folder need it

    keys = list(state)
    if not 1 <= shards <= len(keys):
        raise ValueError(f"shards={shards}: need 1 .. {len(keys)} (one tensor per shard at most)")
    if shards == 1:
        save_file(dict(state), path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        group = keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]
        save_file({k: state[k].contiguous() for k in group}, path / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _write_json(path / "model.safetensors.index.json", index)


def _write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -----------------------------------------------------------------------------
# the tokenizer


def fake_tokenizer(n_merges=400) -> Tokenizer:
    """The fake LLaDA's tokenizer: the bytes in GPT-2 order (ids 0..255), the merges, the added tokens."""
    ranks = {bytes([b]): i for i, b in enumerate(bytes_to_unicode())}  # the dict's order is GPT-2's
    for token in _merges(n_merges):
        ranks[token] = len(ranks)
    added = {s: len(ranks) + k for k, s in enumerate(ADDED_TOKENS)}
    return Tokenizer(ranks, added, TINY_PATTERN, source="fake LLaDA tokenizer")


@functools.cache  # the merges depend on n_merges only: trained once per test session
def _merges(n_merges) -> tuple[bytes, ...]:
    return tuple(train_bpe(_bpe_texts(), n_merges, TINY_PATTERN))


def _bpe_texts() -> list[str]:
    """d1's prompts, the chat template's words, and ~11 kB of rows like the files below. The prompts
    count 50 times: every RL or eval prompt repeats one of them, so they should be the cheapest text.
    With 400 merges every word of the prompts becomes one token."""
    prompts = [SYSTEM_PROMPT, SUDOKU_SYSTEM_PROMPT, GSM8K_EVAL_PROMPT, MATH_EVAL_PROMPT, COUNTDOWN_EVAL_PROMPT,
               COUNTDOWN_RL_QUESTION, "user", "assistant"]
    rows = [text for row in gsm8k_rows(30, seed=1) for text in row.values()]
    rows += [row["thinking_trajectories"][0] + row["attempt"] for row in s1k_rows(15, seed=2)]
    return 50 * prompts + rows


# -----------------------------------------------------------------------------
# data files in d1's published formats (seeded, deterministic, short rows)

NAMES = [("Ava", "she"), ("Ben", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"), ("Tom", "he")]
THINGS = ["apples", "pencils", "cookies", "stickers", "marbles", "books"]


def word_problem(rng: random.Random) -> tuple[str, list[str], int]:
    """A two- or three-step arithmetic word problem, GSM8K-style: (question, solution lines with
    GSM8K's <<calculator>> notes, answer). E.g. ("Ava has 12 apples. She buys 5 more and then gives
    3 to a friend. How many apples does Ava have now?", ["Ava has 12 + 5 = <<12+5=17>>17 ...", ...], 14)"""
    (name, pronoun), thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(5, 40), rng.randint(2, 20)
        c = rng.randint(1, a + b - 1)
        s, r = a + b, a + b - c
        question = (f"{name} has {a} {thing}. {pronoun.capitalize()} buys {b} more and then gives {c} to a "
                    f"friend. How many {thing} does {name} have now?")
        lines = [f"{name} has {a} + {b} = <<{a}+{b}={s}>>{s} {thing} after buying.",
                 f"After giving {c} away, {s} - {c} = <<{s}-{c}={r}>>{r} {thing} are left."]
    elif kind == 1:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        p = a * b
        c = rng.randint(1, p - 1)
        r = p - c
        question = (f"A box holds {a} {thing}. {name} fills {b} boxes and then sells {c} {thing}. "
                    f"How many {thing} does {name} have left?")
        lines = [f"{name} fills {b} * {a} = <<{b}*{a}={p}>>{p} {thing}.",
                 f"After selling {c}, {p} - {c} = <<{p}-{c}={r}>>{r} {thing} are left."]
    elif kind == 2:
        a, b, c = rng.randint(5, 20), rng.randint(2, 8), rng.randint(2, 6)
        d, r = a * b, a * b * c
        question = (f"{name} earns ${a} per hour and works {b} hours a day. How much does {pronoun} earn "
                    f"in {c} days?")
        lines = [f"In one day {pronoun} earns {a} * {b} = $<<{a}*{b}={d}>>{d}.",
                 f"In {c} days {pronoun} earns {d} * {c} = $<<{d}*{c}={r}>>{r}."]
    else:
        a = rng.randint(5, 30)
        b, t = 2 * a, 3 * a + rng.randint(1, 50)
        s, r = a + b, t - 3 * a
        question = (f"{name} reads {a} pages on Monday and twice as many on Tuesday. The book has {t} pages. "
                    f"How many pages are left?")
        lines = [f"On Tuesday {pronoun} reads 2 * {a} = <<2*{a}={b}>>{b} pages.",
                 f"So far {pronoun} has read {a} + {b} = <<{a}+{b}={s}>>{s} pages.",
                 f"{t} - {s} = <<{t}-{s}={r}>>{r} pages are left."]
    return question, lines, r


def gsm8k_rows(n, seed=0) -> list[dict]:
    """GSM8K's format (openai/grade-school-math): {"question", "answer": "<lines>\\n#### N"}."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, lines, answer = word_problem(rng)
        rows.append({"question": question, "answer": "\n".join(lines) + f"\n#### {answer}"})
    return rows


def s1k_rows(n, seed=0) -> list[dict]:
    """s1K's format (simplescaling/s1K, d1's SFT data): {"question", "thinking_trajectories": [trace],
    "attempt", "solution"}. The traces check their work, as s1K's (much longer) ones do."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, lines, answer = word_problem(rng)
        plain = [re.sub(r"<<[^>]*>>", "", line) for line in lines]  # no calculator notes outside GSM8K
        thinking = "\n".join(["Let me work through this step by step.", *plain,
                              f"Wait, let me check the last step again. Yes, it gives {answer}."])
        attempt = "\n".join(plain) + f"\nThe final answer is $\\boxed{{{answer}}}$."
        rows.append({"question": question, "thinking_trajectories": [thinking], "attempt": attempt,
                     "solution": str(answer)})
    return rows


def countdown_rows(n, seed=0) -> list[dict]:
    """TinyZero's Countdown format (d1's RL training data): {"nums": [a, b, c], "target": t}, where
    (x o y) o z reaches t for some order of the numbers and operations from + - * (1 <= t <= 100)."""
    rng = random.Random(seed)
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    rows = []
    while len(rows) < n:
        nums = [rng.randint(1, 99) for _ in range(3)]
        x, y, z = rng.sample(nums, 3)
        target = ops[rng.choice("+-*")](ops[rng.choice("+-*")](x, y), z)
        if 1 <= target <= 100:
            rows.append({"nums": nums, "target": target})
    return rows


def sudoku_rows(n, seed=0, blanks=8) -> list[dict]:
    """d1's 4x4 Sudoku format: {"Puzzle": 16 digits, "0" = empty, "Solution": 16 digits}; `blanks`
    empty cells (d1's test puzzles have 8)."""
    rng = random.Random(seed)
    grids = sudoku_grids()
    rows = []
    for _ in range(n):
        solution = rng.choice(grids)
        empty = set(rng.sample(range(16), blanks))
        puzzle = "".join("0" if i in empty else d for i, d in enumerate(solution))
        rows.append({"Puzzle": puzzle, "Solution": solution})
    return rows


def write_gsm8k(path, n, seed=0) -> Path:
    return _write_jsonl(path, gsm8k_rows(n, seed))


def write_s1k(path, n, seed=0) -> Path:
    return _write_jsonl(path, s1k_rows(n, seed))


def write_countdown(path, n, seed=0) -> Path:
    return _write_jsonl(path, countdown_rows(n, seed))


def write_sudoku(path, n, seed=0) -> Path:
    """A CSV file with the header Puzzle,Solution, as d1's 4x4_test_sudoku.csv."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Puzzle", "Solution"])
        writer.writeheader()
        writer.writerows(sudoku_rows(n, seed))
    return path


def _write_jsonl(path, rows) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
