"""Tests for tests/fake_llada.py: the random LLaDA folder loads like the official one, and the data
files it writes are read by tasks_d1's loaders."""
import itertools
import json
import re

import pytest
import torch

from checkpoint import load_any
from fake_llada import (ADDED_TOKENS, LLADA_CONFIG, countdown_rows, fake_tokenizer, gsm8k_rows, make_llada_folder,
                        write_countdown, write_gsm8k, write_s1k, write_sudoku)
from scoring import countdown_correct, safe_eval
from tasks_d1 import D1_TASKS
from tokenizer import Tokenizer

pytest.importorskip("safetensors")

# Longest RL prompt of one row, chat template included, with the fake tokenizer. Sudoku's and
# Countdown's prompts are at their floor: every word one token, every digit one (TINY_PATTERN).
MAX_PROMPT = {"gsm8k": 150, "countdown": 160, "sudoku": 200}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_llada_folder(tmp_path_factory.mktemp("fake") / "llada", shards=3)


def test_folder_loads_like_the_official_one(folder):
    model, tok = load_any(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config.keys() == LLADA_CONFIG.keys() and config["torch_dtype"] == "bfloat16"
    assert (config["d_model"], config["n_layers"], config["rope_theta"]) == (64, 2, 500000.0)
    assert (config["mask_token_id"], config["eos_token_id"], config["pad_token_id"]) == (tok.mask_id, tok.eos_id,
                                                                                        tok.pad_id)
    assert config["vocab_size"] == config["embedding_size"] == 704 >= tok.n_vocab == 256 + 400 + len(ADDED_TOKENS)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = torch.tensor([tok.chat("What is 2+3?") + [tok.mask_id] * 8])
    with torch.no_grad():
        assert torch.isfinite(model(ids).float()).all()


def test_index_lists_every_tensor_and_the_shards(folder):
    model, _ = load_any(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert index["weight_map"].keys() == model.state_dict().keys()
    assert sorted(set(index["weight_map"].values())) == names
    assert sorted(p.name for p in folder.glob("*.safetensors")) == names
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in model.state_dict().values())  # bf16


def test_tokenizer_has_llada_layout(folder):
    tok = Tokenizer.from_pretrained(folder)
    assert (tok.encode(" "), tok.encode("\n"), tok.encode("A")) == ([220], [198], [32])  # GPT-2 byte order
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    added = [t["content"] for t in spec["added_tokens"]]
    assert added == list(ADDED_TOKENS) and all(t["special"] for t in spec["added_tokens"])
    assert min(t["id"] for t in spec["added_tokens"]) == 256 + len(spec["model"]["merges"])  # after the merges
    assert spec["normalizer"] == {"type": "NFC"}
    role, end_role = tok.special_tokens["<role>"], tok.special_tokens["</role>"]
    assert tok.encode("<role>x</role>") == [role, *tok.encode("x"), end_role]
    assert json.loads((folder / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    # the exported copy is the same file (and its side files)
    tok.save_pretrained(folder.parent / "copy")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (folder.parent / "copy" / name).read_bytes() == (folder / name).read_bytes()


def test_seed_changes_the_weights_not_the_tokenizer(tmp_path, folder):
    other = make_llada_folder(tmp_path / "other", seed=1, shards=1)
    assert (other / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in other.glob("model*")) == ["model.safetensors"]  # one file, no index
    (a, _), (b, _) = load_any(folder), load_any(other)
    key = "model.transformer.wte.weight"
    assert not torch.equal(a.state_dict()[key], b.state_dict()[key])


@pytest.mark.parametrize("write, n, fields", [
    (write_gsm8k, 6, {"question", "answer"}),
    (write_s1k, 6, {"question", "thinking_trajectories", "attempt", "solution"}),
    (write_countdown, 6, {"nums", "target"}),
])
def test_jsonl_writers(tmp_path, write, n, fields):
    path = write(tmp_path / "data" / "rows.jsonl", n, seed=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == n and all(row.keys() == fields for row in rows)
    assert write(tmp_path / "again.jsonl", n, seed=3).read_bytes() == path.read_bytes()  # deterministic


def test_rows_parse_and_make_short_prompts():
    tok = fake_tokenizer()
    rows = {"gsm8k": gsm8k_rows(40), "countdown": countdown_rows(40)}
    items = {name: [D1_TASKS[name].parse(row) for row in task_rows] for name, task_rows in rows.items()}
    for item, row in zip(items["gsm8k"], rows["gsm8k"]):
        assert 60 <= len(item["question"]) <= 200 and item["answer"].isdigit()
        notes = re.findall(r"<<([^=]*)=(\d+)>>", row["answer"])  # GSM8K's calculator notes: all correct
        assert notes and all(safe_eval(expr) == int(value) for expr, value in notes)
        assert notes[-1][1] == item["answer"]
    for item in items["countdown"]:  # some order of the numbers and operations reaches the target
        orders = itertools.permutations(item["numbers"])
        exprs = [f"({x}{o}{y}){p}{z}" for x, y, z in orders for o in "+-*" for p in "+-*"]
        assert any(countdown_correct(e, item["numbers"], item["target"]) for e in exprs), item
    for name, task_items in items.items():
        task = D1_TASKS[name]
        assert max(len(tok.chat(task.rl_prompt(item))) for item in task_items) <= MAX_PROMPT[name]


def test_hugging_face_reads_the_tokenizer_the_same_way(folder):
    """With Hugging Face's tokenizers installed (not a dependency): the same ids for d1 prompts."""
    hf_tokenizers = pytest.importorskip("tokenizers")
    hf = hf_tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok = Tokenizer.from_pretrained(folder)
    gsm8k, countdown = D1_TASKS["gsm8k"], D1_TASKS["countdown"]
    texts = [tok.decode(tok.chat(gsm8k.rl_prompt(gsm8k.parse(row)))) for row in gsm8k_rows(20, seed=5)]
    texts += [countdown.eval_prompt(countdown.parse(row)) for row in countdown_rows(5)]
    texts += [tok.decode([i]) for i in range(256, tok.n_vocab)]
    assert [hf.encode(t, add_special_tokens=False).ids for t in texts] == [tok.encode(t) for t in texts]


def test_sudoku_csv_loads_with_the_d1_loader(tmp_path):
    path = write_sudoku(tmp_path / "sudoku.csv", 5)
    assert path.read_text().splitlines()[0] == "Puzzle,Solution"
    items = D1_TASKS["sudoku"].load(path)  # checks each puzzle against its solution
    assert len(items) == 5 and all(item["puzzle"].count("0") == 8 for item in items)
    assert len(fake_tokenizer().chat(D1_TASKS["sudoku"].rl_prompt(items[0]))) <= MAX_PROMPT["sudoku"]
