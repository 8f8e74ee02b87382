"""
d1's data files, read as their publishers distribute them (nothing is fetched at run time; README,
"d1 at full scale", gives the commands that download each file): JSON lines (also what Hugging
Face `datasets` writes with .to_json()), a JSON array, CSV (Sudoku), Parquet (what the hub serves;
needs the optional pyarrow).

    from data_d1 import s1k_examples
    pairs = s1k_examples("data/s1k.jsonl")   # d1's SFT data: [(question, response)], d1's format
    # the four tasks' files are read by their task: tasks_d1.d1_task("gsm8k").load("data/gsm8k_train.jsonl")

A bad file raises DataError (a ValueError) naming the file, the line (or row) and the field, and,
when the record looks like another data set's, which one.
"""
import csv
import json
from pathlib import Path

# d1's data as its publishers distribute it (README, "d1 at full scale", lists the sets): JSON lines (also what
# Hugging Face `datasets` writes with .to_json()), CSV (Sudoku), Parquet (what the hub serves).

class DataError(ValueError):
    """A data file that cannot be used: missing, unreadable, empty, or a record that is malformed
    (the message names the file, the line or row, and the field)."""


def _decode(text, path, lineno):
    """json.loads(text), text starting at line lineno of path."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:  # e.lineno counts from the start of text
        raise DataError(f"{path}, line {lineno + e.lineno - 1}: not valid JSON ({e.msg})") from None


def _json_lines(path):
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield f"line {lineno}", _decode(line.strip(), path, lineno)


def _json_file(path):
    """JSON lines (what .to_json() writes), or one top-level array of objects."""
    with open(path, encoding="utf-8") as f:
        is_array = f.read(1024).lstrip().startswith("[")
    if not is_array:
        yield from _json_lines(path)
        return
    for n, row in enumerate(_decode(path.read_text(encoding="utf-8"), path, 1), 1):
        yield f"row {n}", row


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's BOM is dropped
        reader = csv.DictReader(f)
        for row in reader:
            yield f"line {reader.line_num}", row


def _parquet_rows(path):
    try:  # optional: only Parquet files need it
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        jsonl = path.with_suffix(".jsonl")
        raise DataError(
            f"{path}: reading Parquet needs pyarrow: pip install pyarrow (or convert the file to JSON "
            f"lines: python -c \"from datasets import load_dataset; load_dataset('parquet', "
            f"data_files='{path}', split='train').to_json('{jsonl}')\")") from None
    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    for n, row in enumerate(rows, 1):
        yield f"row {n}", row


_READERS = {".jsonl": _json_lines, ".json": _json_file, ".csv": _csv_rows, ".parquet": _parquet_rows}


def read_records(path):
    """Yield (where, record) from a data file: where is "line N" (JSON lines, CSV: the line in the
    file) or "row N" (JSON array, Parquet), for error messages. A missing file, an unknown suffix
    and a file without rows raise DataError."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown data file type {path.suffix!r} "
                        f"(supported: {', '.join(_READERS)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = 0
    try:
        for rows, where_and_record in enumerate(reader(path), 1):
            yield where_and_record
    except UnicodeDecodeError as e:  # a binary file, or another encoding
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if rows == 0:
        raise DataError(f"{path}: no rows in the file")


def get_field(record, key, kind):
    """record[key], checked to be of type kind (a clear message instead of a KeyError)."""
    if not isinstance(record, dict) or key not in record:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"missing field {key!r} (found {found})")
    if not isinstance(record[key], kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"field {key!r} should be a {names}, got {record[key]!r:.60}")
    return record[key]


def as_integers(values, what) -> list[int]:
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise DataError(f"{what} should be integers, got {values!r:.60}") from None


# The fields that mark each published format, most specific first (s1K rows also hold "question").
_SIGNATURES = (("s1k", {"question", "thinking_trajectories", "attempt"}),
               ("math500", {"problem"}),                        # MATH: problem + solution and/or answer
               ("gsm8k", {"question", "answer"}),
               ("countdown", {"nums", "target"}), ("countdown", {"input", "output"}),  # TinyZero, d1
               ("sudoku", {"Puzzle", "Solution"}))


def guess_task(record) -> str | None:
    """Which known data set a record looks like, from its field names (None if none fits)."""
    if isinstance(record, dict):
        for name, fields in _SIGNATURES:
            if fields <= record.keys():
                return name
    return None


def parse_all(path, parse, name) -> list:
    """parse(record) for every record of the file; a failure names file, line and field, and says
    so when the record belongs to another task's data."""
    parsed = []
    for where, record in read_records(path):
        try:
            parsed.append(parse(record))
        except ValueError as e:
            guess = guess_task(record)
            hint = f"; this looks like {guess} data, not {name}" if guess not in (None, name) else ""
            raise DataError(f"{path}, {where}: bad {name} record: {e}{hint}") from None
    return parsed


def s1k_examples(path) -> list[tuple[str, str]]:
    r"""d1's SFT data, s1K (simplescaling/s1K: question, thinking_trajectories, attempt), as
    (question, response) pairs, the response in d1's SFT format:
    "<reasoning>{thinking}</reasoning>\n<answer>{attempt}</answer>"."""
    return parse_all(path, _s1k_example, "s1k")


def _s1k_example(record) -> tuple[str, str]:
    question = get_field(record, "question", str)
    thinking = get_field(record, "thinking_trajectories", (list, str))
    thinking = [thinking] if isinstance(thinking, str) else thinking  # a plain string: one trajectory
    if not thinking or not all(isinstance(t, str) for t in thinking):
        raise DataError(f"field 'thinking_trajectories' should be a non-empty list of str, "
                        f"got {thinking!r:.60}")
    attempt = get_field(record, "attempt", str)
    reasoning = "\n".join(thinking)  # s1K rows hold one trajectory
    return question, f"<reasoning>{reasoning}</reasoning>\n<answer>{attempt}</answer>"
