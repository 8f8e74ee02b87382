"""
Evaluation. One mode for now: rescoring d1's published generation files with d1's evaluation parsing.

    python eval.py --rescore ../shared/data/llada_generations/*_256_*.json
    python eval.py --rescore some_file.json --task countdown   # when the file name does not say

Each file holds {"generations": [{"question", "generations", "ground_truth"}, ...], "gen_length", ...};
the task is read from the file name ("gsm8k_instruct_256_128_3_generations.json" is GSM8K) unless
--task says. All files of one task and generation length are pooled into one accuracy, as the paper
does. One line is printed per task and generation length, and the last line reads
`accuracy: XX.XX% (C/T)`, where C/T are the counts behind d1's metric: items for GSM8K, MATH500 and
Countdown; empty cells for Sudoku (its lines also give whole puzzles solved). With several tasks the
last line pools all of them.

Expected on the gen-length-256 files (the LLaDA-8B-Instruct row of Table 1, docs/d1.md):
GSM8K 76.37% (1,130 items), MATH500 32.40% (500), Countdown 19.53% (256), Sudoku 6.69% (cells).
"""
import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tasks import TASKS


@dataclass
class Score:
    """The pooled result of one task at one generation length."""
    task: str
    gen_length: int | None
    correct: int  # d1's numerator: items right, or (Sudoku) empty cells right
    total: int  # d1's denominator: items, or (Sudoku) empty cells
    items: int
    solved: int  # items entirely right (for Sudoku, puzzles with every empty cell right)
    files: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.total if self.total else 0.0


def task_of(path: Path) -> str:
    """The task named at the start of a generation file's name, e.g. "math500_instruct_...json"."""
    name = path.name.split("_")[0]
    if name not in TASKS:
        raise ValueError(f"{path}: cannot tell the task from the file name; pass --task "
                         f"(one of {', '.join(TASKS)})")
    return name


def read_generations(path: Path) -> tuple[list[dict], int | None]:
    """The records of one generation file, and its generation length (from the file, else its name)."""
    try:
        data = json.loads(path.read_text())
        records = data["generations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a d1 generation file ({type(e).__name__}: {e})") from None
    gen_length = data.get("gen_length")
    if gen_length is None and (m := re.search(r"_(\d+)_\d+_\d+_generations", path.name)):
        gen_length = int(m.group(1))
    return records, gen_length


def rescore(files, task: str | None = None) -> list[Score]:
    """Score generation files with d1's evaluation parsing: one Score per (task, gen length)."""
    scores: dict[tuple, Score] = {}
    for path in map(Path, files):
        name = task or task_of(path)
        records, gen_length = read_generations(path)
        score = scores.setdefault((name, gen_length), Score(name, gen_length, 0, 0, 0, 0, 0))
        score.files += 1
        for i, record in enumerate(records):
            try:
                item = TASKS[name].from_generation(record)
                correct, total = TASKS[name].score(record["generations"], item)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}: record {i}: {type(e).__name__}: {e}") from None
            score.correct += correct
            score.total += total
            score.items += 1
            score.solved += correct == total
    return list(scores.values())


def print_scores(scores: list[Score]) -> None:
    for s in scores:
        line = f"{s.task:<9} gen {s.gen_length}: {s.accuracy:6.2f}% ({s.correct}/{s.total})"
        if s.task == "sudoku":
            line += f" cells; puzzles solved {s.solved}/{s.items}"
        print(f"{line}  [{s.items} items, {s.files} files]")
    correct, total = sum(s.correct for s in scores), sum(s.total for s in scores)
    print(f"accuracy: {100.0 * correct / total if total else 0.0:.2f}% ({correct}/{total})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group(required=True)
    modes.add_argument("--rescore", nargs="+", metavar="FILE",
                       help="d1 generation json files to score with d1's evaluation parsing")
    parser.add_argument("--task", choices=sorted(TASKS), help="override the task read from file names")
    args = parser.parse_args(argv)
    if args.rescore:
        print_scores(rescore(args.rescore, args.task))


if __name__ == "__main__":
    main()
