"""eval.py --rescore on LLaDA's published generations reproduces d1's Table 1 numbers to the hundredth."""
import json
import time

import pytest

from eval import main, rescore

TARGETS = {  # d1's Table 1 (LLaDA-8B-Instruct row): the official parser's numbers at gen length 256
    "gsm8k": ("76.37", 1130, 1130),  # (accuracy, items, total count behind it)
    "math500": ("32.40", 500, 500),
    "countdown": ("19.53", 256, 256),
    "sudoku": ("6.69", 256, 2048),  # cells: 8 empty cells in each of 256 puzzles
}


def _files(shared, task):
    return sorted((shared / "data/llada_generations").glob(f"{task}_*_256_*.json"))


@pytest.mark.parametrize("task", sorted(TARGETS))
def test_rescore_reproduces_table_1(shared, task):
    [score] = rescore(_files(shared, task))
    accuracy, items, total = TARGETS[task]
    assert (score.task, score.gen_length) == (task, 256)
    assert (f"{score.accuracy:.2f}", score.items, score.total) == (accuracy, items, total)
    if task == "sudoku":
        assert score.solved == 0  # cell accuracy 6.69%, and LLaDA solves no puzzle whole
    else:
        assert score.solved == score.correct


def test_rescore_of_all_files_is_fast_and_prints_d1s_line(shared, capsys):
    files = [f for task in TARGETS for f in _files(shared, task)]
    start = time.perf_counter()
    main(["--rescore", *map(str, files)])
    assert time.perf_counter() - start < 5.0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("accuracy: ")
    assert "76.37% (863/1130)" in lines[0] and "puzzles solved 0/256" in lines[3]


def test_task_flag_overrides_the_file_name(shared, tmp_path, capsys):
    renamed = tmp_path / "llada_run.json"
    renamed.write_text(_files(shared, "countdown")[0].read_text())
    with pytest.raises(ValueError, match="--task"):
        rescore([renamed])
    main(["--rescore", str(renamed), "--task", "countdown"])
    records = json.loads(renamed.read_text())["generations"]
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"/{len(records)})")
