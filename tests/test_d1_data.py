"""data_d1.py and tasks_d1.py: data loading: d1's training and test files in the formats their publishers ship them
(JSON lines, a JSON array, CSV, Parquet), the errors a user sees for a bad file (file, line, field; another
task's data; a missing, empty or unknown file), Countdown's 3-number filter, task names, s1K's SFT pairs,
and the ground truths of d1's generation files."""
import json
import re
import sys

import pytest

from tasks import TaskError
from data_d1 import DataError, guess_task, s1k_examples
from tasks_d1 import D1_TASKS, d1_task

# One record of each published format, as the hub or d1's repository ships it.
GSM8K_ROW = {"question": "Ann has 2 pens and buys 3. How many?", "answer": "2+3=5\n#### 5"}
MATH_ROW = {"problem": "Half of 1?", "solution": r"It is $\boxed{\frac{1}{2}}$."}  # ankner/math-500 train
COUNTDOWN_ROW = {"nums": [3, 5, 7], "target": 22}                                  # TinyZero
SUDOKU_ROW = {"Puzzle": "1204340021034021", "Solution": "1234341221434321"}
S1K_ROW = {"question": "What is 2+3?", "solution": "5", "thinking_trajectories": ["2+3 is 5."],
           "attempt": "The answer is 5."}
ROWS = {"gsm8k": GSM8K_ROW, "math500": MATH_ROW, "countdown": COUNTDOWN_ROW, "sudoku": SUDOKU_ROW,
        "s1k": S1K_ROW}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ----------------------------------------------------------------------------- file formats

def test_json_lines_and_json_array_give_the_same_items(tmp_path):
    rows = [GSM8K_ROW, {"question": "Big?", "answer": "#### 1,450,000"}]
    lines = write_jsonl(tmp_path / "train.json", rows)  # what datasets' .to_json() writes
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows, indent=2))
    items = D1_TASKS["gsm8k"].load(lines)
    assert [item["answer"] for item in items] == ["5", "1,450,000"]
    assert D1_TASKS["gsm8k"].load(array) == items
    assert D1_TASKS["gsm8k"].load(write_jsonl(tmp_path / "train.jsonl", rows)) == items


def test_csv_with_and_without_a_byte_order_mark(tmp_path):
    text = "Puzzle,Solution\n1204340021034021,1234341221434321\n"
    (tmp_path / "plain.csv").write_text(text)
    (tmp_path / "bom.csv").write_text("\ufeff" + text, encoding="utf-8")  # as a spreadsheet saves it
    expected = [{"puzzle": "1204340021034021", "solution": "1234341221434321"}]
    assert D1_TASKS["sudoku"].load(tmp_path / "plain.csv") == expected
    assert D1_TASKS["sudoku"].load(tmp_path / "bom.csv") == expected


def test_parquet(tmp_path):
    pytest.importorskip("pyarrow", reason="reading Parquet needs pyarrow (an optional dependency)")
    path = write_parquet(tmp_path / "countdown.parquet", [COUNTDOWN_ROW, {"nums": [1, 2, 3], "target": 6}])
    assert D1_TASKS["countdown"].load(path) == [{"numbers": [3, 5, 7], "target": 22},
                                                 {"numbers": [1, 2, 3], "target": 6}]
    path = write_parquet(tmp_path / "s1k.parquet", [S1K_ROW])  # a list<string> column
    assert s1k_examples(path) == [("What is 2+3?",
                                   "<reasoning>2+3 is 5.</reasoning>\n<answer>The answer is 5.</answer>")]
    bad = write_parquet(tmp_path / "bad.parquet", [GSM8K_ROW, {"question": "q", "answer": "no final"}])
    with pytest.raises(DataError, match=re.escape(f"{bad}, row 2: bad gsm8k record: field \"answer\"")):
        D1_TASKS["gsm8k"].load(bad)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=re.escape(f"{broken}: not a readable Parquet file")):
        D1_TASKS["gsm8k"].load(broken)


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # None in sys.modules: "import pyarrow" fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError) as error:
        D1_TASKS["gsm8k"].load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: reading Parquet needs pyarrow: pip install pyarrow")
    assert "convert the file to JSON lines" in message and "train.jsonl" in message


# ----------------------------------------------------------------------------- bad files

@pytest.mark.parametrize("name, text, where, complaint", [
    ("gsm8k", '{"question": "q", "answer": "#### 1"}\n{"answer": "#### 2"}\n', "line 2",
     "bad gsm8k record: missing field 'question' (found ['answer'])"),
    ("gsm8k", '[{"question": "q", "answer": "#### 1"}, {"question": 7, "answer": "#### 2"}]', "row 2",
     "bad gsm8k record: field 'question' should be a str, got 7"),
    ("gsm8k", '[{"question": "q",\n "answer": }]', "line 2", "not valid JSON"),
    ("math500", '{"problem": "p", "solution": 3}\n', "line 1", "field 'solution' should be a str"),
    ("countdown", '{"nums": [1, 2, 3], "target": "six"}\n', "line 1", '"target" should be integers'),
    ("countdown", '{"input": "1,2,3"}\n', "line 1", "missing field 'output'"),
    ("sudoku", "Puzzle,Solution\n1204340021034021,1234341221434321\n1204340021034021\n", "line 3",
     "field 'Solution' should be a str, got None"),
    ("sudoku", "Puzzle,Answer\n1204340021034021,1234341221434321\n", "line 2",
     "missing field 'Solution' (found ['Answer', 'Puzzle'])"),
])
def test_malformed_rows_name_file_line_andget_field(tmp_path, name, text, where, complaint):
    path = tmp_path / ("data.csv" if name == "sudoku" else "data.json")
    path.write_text(text)
    with pytest.raises(DataError) as error:
        D1_TASKS[name].load(path)
    assert str(error.value).startswith(f"{path}, {where}: ") and complaint in str(error.value)
    assert "looks like" not in str(error.value)  # the task's own data: no hint


@pytest.mark.parametrize("data", sorted(ROWS))
def test_another_tasks_data_is_refused_with_a_hint(tmp_path, data):
    path = write_jsonl(tmp_path / f"{data}.jsonl", [ROWS[data]])
    others = [name for name in D1_TASKS if name != data]
    for name in others:
        with pytest.raises(DataError, match=re.escape(f"{path}, line 1: bad {name} record: ")) as error:
            D1_TASKS[name].load(path)
        assert str(error.value).endswith(f"; this looks like {data} data, not {name}")
    if data != "s1k":
        with pytest.raises(DataError, match=f"line 1: bad s1k record: .*looks like {data} data, not s1k$"):
            s1k_examples(path)


def test_the_hint_example_of_the_brief(tmp_path):
    path = write_jsonl(tmp_path / "cd.jsonl", [COUNTDOWN_ROW])
    with pytest.raises(DataError) as error:
        D1_TASKS["gsm8k"].load(path)
    assert str(error.value) == (f"{path}, line 1: bad gsm8k record: missing field 'question' (found "
                                "['nums', 'target']); this looks like countdown data, not gsm8k")


def testguess_task_from_field_names():
    assert {name: guess_task(row) for name, row in ROWS.items()} == {name: name for name in ROWS}
    assert guess_task({"input": "1,2,3", "output": "6"}) == "countdown"  # d1's own test file
    assert guess_task({"problem": "p", "answer": "1"}) == "math500"     # MATH-500's test file
    assert guess_task({"text": "hi"}) is None and guess_task([1, 2]) is None


def test_unknown_suffix_missing_and_empty_files(tmp_path):
    (tmp_path / "data.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"data\.txt: unknown data file type '\.txt' \(supported: "
                                        r"\.jsonl, \.json, \.csv, \.parquet\)"):
        D1_TASKS["gsm8k"].load(tmp_path / "data.txt")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.jsonl'}: no such file")):
        D1_TASKS["gsm8k"].load(tmp_path / "nope.jsonl")
    for name, text in [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.json", "[]"),
                       ("header.csv", "Puzzle,Solution\n"), ("empty.csv", "")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}: no rows in the file")):
            D1_TASKS["sudoku"].load(tmp_path / name)
    (tmp_path / "binary.jsonl").write_bytes(b"PAR1\xff\xfe\x00")  # e.g. a Parquet file renamed
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'binary.jsonl'}: not UTF-8 text")):
        D1_TASKS["gsm8k"].load(tmp_path / "binary.jsonl")
    assert issubclass(DataError, ValueError)  # the command lines print ValueErrors as one line


# ----------------------------------------------------------------------------- per-task details

def test_countdown_keeps_only_three_number_puzzles(tmp_path):
    rows = [{"nums": [1, 2, 3, 4], "target": 10}, COUNTDOWN_ROW, {"nums": [9, 9, 9, 9], "target": 0},
            {"nums": [2, 4, 8], "target": 4}]
    path = write_jsonl(tmp_path / "cd.jsonl", rows)
    assert D1_TASKS["countdown"].load(path) == [{"numbers": [3, 5, 7], "target": 22},
                                                 {"numbers": [2, 4, 8], "target": 4}]
    path = write_jsonl(tmp_path / "four.jsonl", rows[::2])
    with pytest.raises(DataError, match=re.escape(f"{path}: no Countdown puzzle with 3 numbers")):
        D1_TASKS["countdown"].load(path)
    d1_test = write_jsonl(tmp_path / "d1.jsonl", [{"input": "30,100,93", "output": "23"}])
    assert D1_TASKS["countdown"].load(d1_test) == [{"numbers": [30, 100, 93], "target": 23}]


def test_math_rows_with_and_without_an_answerget_field(tmp_path):
    rows = [MATH_ROW,                                                       # gold from the last box
            {"problem": "2+2?", "solution": r"$\boxed{3}$, no: $\boxed{4}$"},
            {"problem": "Half?", "solution": "It is a half.", "answer": r"\frac12"},  # MATH-500 test
            {"problem": "3?", "answer": 3}]                                 # no solution; a number
    items = D1_TASKS["math500"].load(write_jsonl(tmp_path / "math.jsonl", rows))
    assert [item["answer"] for item in items] == [r"\frac{1}{2}", "4", r"\frac12", "3"]
    assert items[0]["question"] == "Half of 1?" and items[0]["solution"] == MATH_ROW["solution"]
    assert D1_TASKS["math500"].correct_counts(r"\boxed{0.5}", items[0]) == (1, 1)


def test_d1_task_names():
    assert d1_task("math") is d1_task("math500") is D1_TASKS["math500"]
    assert [d1_task(name).name for name in ("gsm8k", "countdown", "sudoku")] == ["gsm8k", "countdown",
                                                                                 "sudoku"]
    assert sorted(D1_TASKS) == ["countdown", "gsm8k", "math500", "sudoku"]  # the alias is not a key
    for bad in ("MATH", "gsm8", "", "s1k"):
        with pytest.raises(TaskError, match="valid: gsm8k, math500, countdown, sudoku"):
            d1_task(bad)


def test_s1k_examples(tmp_path):
    rows = [S1K_ROW, {**S1K_ROW, "thinking_trajectories": ["first", "second"]},
            {**S1K_ROW, "thinking_trajectories": "one string"}]
    pairs = s1k_examples(write_jsonl(tmp_path / "s1k.jsonl", rows))
    answer = "\n<answer>The answer is 5.</answer>"
    assert pairs == [("What is 2+3?", "<reasoning>2+3 is 5.</reasoning>" + answer),
                     ("What is 2+3?", "<reasoning>first\nsecond</reasoning>" + answer),  # joined by \n
                     ("What is 2+3?", "<reasoning>one string</reasoning>" + answer)]


@pytest.mark.parametrize("row, complaint", [
    ({**S1K_ROW, "thinking_trajectories": []}, "'thinking_trajectories' should be a non-empty list of str"),
    ({**S1K_ROW, "thinking_trajectories": ["ok", 3]}, "'thinking_trajectories' should be a non-empty list"),
    ({**S1K_ROW, "thinking_trajectories": None}, "'thinking_trajectories' should be a list or str"),
    ({k: v for k, v in S1K_ROW.items() if k != "attempt"}, "missing field 'attempt'"),
    ({**S1K_ROW, "question": ["q"]}, "field 'question' should be a str"),
])
def test_s1k_errors_name_file_line_andget_field(tmp_path, row, complaint):
    path = write_jsonl(tmp_path / "s1k.jsonl", [S1K_ROW, row])
    with pytest.raises(DataError, match=re.escape(f"{path}, line 2: bad s1k record: ")) as error:
        s1k_examples(path)
    assert complaint in str(error.value)


# ----------------------------------------------------------------------------- generation files

@pytest.mark.parametrize("name, row, truth, texts", [
    ("gsm8k", GSM8K_ROW, 5.0, ["<answer>\\boxed{5}</answer>", "\\boxed{6}", "<answer>5.0</answer>"]),
    ("gsm8k", {"question": "q", "answer": "#### 1,450,000"}, 1450000.0, ["\\boxed{1450000}", "no"]),
    ("math500", MATH_ROW, r"\frac{1}{2}", [r"\boxed{0.5}", r"\boxed{1/3}", "<answer>1/2</answer>"]),
    ("countdown", COUNTDOWN_ROW, [[3, 5, 7], 22], [r"\boxed{3*5+7}", r"\boxed{3+5+7}", "3*5+7 = 22"]),
    ("sudoku", SUDOKU_ROW, "1234341221434321",
     ["<answer>1234341221434321</answer>", "<answer>1234341221430000</answer>", "nothing"]),
])
def test_ground_truth_round_trips_through_a_generation_record(name, row, truth, texts):
    task = D1_TASKS[name]
    item = task.parse(row)
    assert task.ground_truth(item) == truth
    for text in texts:
        # a record as d1's generation files hold it (through JSON, as they are stored)
        record = json.loads(json.dumps({"question": task.eval_prompt(item), "generations": text,
                                        "ground_truth": task.ground_truth(item)}))
        back = task.from_generation(record)
        assert task.correct_counts(text, back) == task.correct_counts(text, item)
        assert task.ground_truth(back) == truth
    assert task.correct(texts[0], item) == 1.0 and task.correct(texts[1], item) < 1.0


def test_ground_truth_matches_the_published_generation_files(shared):
    generations = shared / "data/llada_generations"
    records = {name: json.loads((generations / f"{name}_instruct_256_128_0_generations.json").read_text())
               ["generations"] for name in D1_TASKS}
    for name, task in D1_TASKS.items():  # ground_truth inverts from_generation on every record
        assert all(task.ground_truth(task.from_generation(r)) == r["ground_truth"] for r in records[name])
    gsm8k = {item["question"]: D1_TASKS["gsm8k"].ground_truth(item)
             for item in D1_TASKS["gsm8k"].load(shared / "data/gsm8k/test.jsonl")}
    assert all(gsm8k[r["question"]] == r["ground_truth"] for r in records["gsm8k"])
    countdown = D1_TASKS["countdown"].load(shared / "data/d1/countdown_cd3_test.jsonl")
    truths = [D1_TASKS["countdown"].ground_truth(item) for item in countdown]
    assert all(r["ground_truth"] in truths for r in records["countdown"])
