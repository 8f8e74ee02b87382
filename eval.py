"""
Evaluation, three modes.

    python eval.py --ckpt=checkpoints/tiny-sft.pt            # a checkpoint on the tiny tasks' test sets
    python eval.py --ckpt=out/grpo/ckpt.pt --tasks=countdown --gen_length=96,128 --n=256
    python eval.py --table                                   # the tiny d1 table: 4 checkpoints x tasks x 2 lengths
    python eval.py --rescore ../shared/data/llada_generations/*_256_*.json   # d1's published generations

--ckpt and --table follow d1's evaluation protocol scaled to the tiny setting: greedy decoding
(temperature 0), low-confidence remasking, blocks of 32, steps = gen_length / 2, on the tiny
tasks' held-out test split. (d1 also prefills the assistant turn with "<reasoning>"; the tiny
model is trained to write it itself, so nothing is prefilled.) Each line reads
    <task> gen_length=<N>: accuracy=<X>% format=<Y>% n=<n>
where format is the share of completions that are exactly "<reasoning>..</reasoning>\n<answer>..
</answer>" and then stop (end of turn, EOS padding to the end).

--rescore scores d1's published generation files with d1's evaluation parsing:

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
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import load_model
from diffusion import generate
from grpo import answer_text, left_pad
from tasks import TASKS, get_tiny_tasks
from tokenizer import Tokenizer
from train import autocast, pick_device


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


# ----------------------------------------------------------------------------- tiny tasks


@torch.no_grad()
def evaluate(model, tok, task, examples, gen_length, batch_size=64, dtype="bfloat16"):
    """Greedy completions for `examples`, scored by task.correct and the format check.

    Returns dict(accuracy, stderr, format, n); accuracy and format in percent. The standard error
    is that of a mean over items (Sudoku items score the share of their empty cells right)."""
    device = next(model.parameters()).device
    model.eval()
    scores, well_formed = [], []
    for i in range(0, len(examples), batch_size):
        batch = examples[i: i + batch_size]
        prompt_ids, attention = left_pad([tok.chat(ex.prompt) for ex in batch], tok.eos_id)
        with autocast(device, dtype):
            out = generate(model, prompt_ids.to(device), steps=gen_length // 2, gen_length=gen_length,
                           block_length=min(32, gen_length), attention_mask=attention.to(device))
        for ex, ids in zip(batch, out[:, prompt_ids.size(1):].tolist()):
            text = answer_text(tok, ids)
            scores.append(task.correct(text, ex))
            well_formed.append(task.format_ok(text) and stops_cleanly(tok, ids))
    n = len(scores)
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / max(1, n - 1)
    return {"accuracy": 100 * mean, "stderr": 100 * math.sqrt(var / n), "n": n,
            "format": 100 * sum(well_formed) / n}


def stops_cleanly(tok, ids):
    """The answer ends with <|eot_id|> or EOS and only EOS padding follows (what SFT teaches)."""
    stops = [i for i, t in enumerate(ids) if t in (tok.eot_id, tok.eos_id)]
    return bool(stops) and all(t in (tok.eos_id, tok.eot_id) for t in ids[stops[0]:])


def eval_checkpoint(path, task_names="all", gen_lengths=(96, 128), n=256, batch_size=64, device="auto",
                    dtype="bfloat16", quiet=False):
    """Evaluate one checkpoint on the tiny tasks' test sets: {(task, gen_length): result dict}."""
    model, _ = load_model(path, device=pick_device(device))
    tok = Tokenizer.tiny()
    results = {}
    for task in get_tiny_tasks(task_names):
        examples = task.examples("test", n)
        for gen_length in gen_lengths:
            r = evaluate(model, tok, task, examples, gen_length, batch_size, dtype)
            results[(task.name, gen_length)] = r
            if not quiet:
                print(f"{task.name} gen_length={gen_length}: accuracy={r['accuracy']:.1f}% "
                      f"format={r['format']:.1f}% n={r['n']}", flush=True)
    return results


TABLE_ROWS = (("base (pretrained)", "checkpoints/tiny-base.pt"), ("+SFT", "checkpoints/tiny-sft.pt"),
              ("+diffu-GRPO", "checkpoints/tiny-grpo.pt"), ("d1 (SFT + diffu-GRPO)", "checkpoints/tiny-d1.pt"))


def print_table(task_names="all", gen_lengths=(96, 128), n=256, batch_size=64, device="auto"):
    """The tiny d1 table: accuracy (standard error) per checkpoint, task and generation length."""
    tasks = [t.name for t in get_tiny_tasks(task_names)]
    columns = [(t, g) for t in tasks for g in gen_lengths]
    rows = []
    for name, path in tqdm(TABLE_ROWS, desc="table"):
        if not Path(path).is_file():
            raise SystemExit(f"{path} is missing: train it first (README, 'The tiny d1 table')")
        results = eval_checkpoint(path, task_names, gen_lengths, n, batch_size, device, quiet=True)
        average = sum(results[c]["accuracy"] for c in columns) / len(columns)
        rows.append((name, results, average))
    header = ("| model | " + " | ".join(f"{t} {g}" for t, g in columns) + " | average |\n"
              + "|---" * (len(columns) + 2) + "|")
    print(f"\nTiny d1 table: accuracy % (standard error), greedy, steps = gen_length / 2, n = {n} per cell\n")
    print(header)
    for name, results, average in rows:
        cells = " | ".join(f"{results[c]['accuracy']:.1f} ({results[c]['stderr']:.1f})" for c in columns)
        print(f"| {name} | {cells} | {average:.1f} |")
    print("\nFormat: % of completions well formed and stopping with EOS padding\n")
    print(header)
    for name, results, _ in rows:
        formats = [results[c]["format"] for c in columns]
        print(f"| {name} | " + " | ".join(f"{f:.1f}" for f in formats) + f" | {sum(formats) / len(formats):.1f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group(required=True)
    modes.add_argument("--rescore", nargs="+", metavar="FILE",
                       help="d1 generation json files to score with d1's evaluation parsing")
    modes.add_argument("--ckpt", help="a project checkpoint to evaluate on the tiny tasks")
    modes.add_argument("--table", action="store_true", help="the tiny d1 table (four shipped checkpoints)")
    parser.add_argument("--task", choices=sorted(TASKS), help="--rescore: override the task read from file names")
    parser.add_argument("--tasks", default="all", help="tiny tasks, comma-separated, or all")
    parser.add_argument("--gen_length", default="96,128", help="comma-separated generation lengths")
    parser.add_argument("--n", type=int, default=None, help="test questions per task (default 256, as d1 for Countdown and Sudoku)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    gen_lengths = tuple(int(g) for g in args.gen_length.split(","))
    try:
        if args.rescore:
            print_scores(rescore(args.rescore, args.task))
        elif args.ckpt:
            eval_checkpoint(args.ckpt, args.tasks, gen_lengths, args.n or 256, args.batch_size, args.device)
        else:
            print_table(args.tasks, gen_lengths, args.n or 256, args.batch_size, args.device)
    except ValueError as e:  # CheckpointError, TaskError, unreadable generation files
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
