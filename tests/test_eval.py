"""eval.py on the tiny tasks: the shipped checkpoints load and score, and the table prints both tables."""
from pathlib import Path

import pytest

import eval as evaluation

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["tiny-base", "tiny-sft", "tiny-grpo", "tiny-d1"])
def test_shipped_checkpoints_load_and_score(name, capsys):
    path = ROOT / "checkpoints" / f"{name}.pt"
    assert path.stat().st_size <= 20 * 2**20  # the size limit
    results = evaluation.eval_checkpoint(path, "arith", gen_lengths=(32,), n=4, batch_size=4)
    r = results[("arith", 32)]
    assert r["n"] == 4 and 0 <= r["accuracy"] <= 100 and 0 <= r["format"] <= 100
    assert "arith gen_length=32: accuracy=" in capsys.readouterr().out


def test_table_prints_accuracy_and_format_rows(monkeypatch, capsys):
    rows = (("base", ROOT / "checkpoints/tiny-base.pt"), ("sft", ROOT / "checkpoints/tiny-sft.pt"))
    monkeypatch.setattr(evaluation, "TABLE_ROWS", rows)
    evaluation.print_table("sudoku", gen_lengths=(32,), n=2, batch_size=2)
    out = capsys.readouterr().out
    accuracy, fmt = out.split("Format:")
    for table in (accuracy, fmt):
        assert "| model | sudoku 32 | average |" in table
        assert "| base | " in table and "| sft | " in table


def test_table_names_a_missing_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setattr(evaluation, "TABLE_ROWS", (("base", tmp_path / "nope.pt"),))
    with pytest.raises(SystemExit, match="nope.pt is missing"):
        evaluation.print_table("arith", gen_lengths=(32,), n=2)
