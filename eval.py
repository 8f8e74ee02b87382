"""
Evaluation, four modes; and complete(), the "ask the model and score the answers" helper that
evaluation and the RL rollouts share.

    python eval.py --ckpt=checkpoints/tiny-sft.pt            # a checkpoint on the tiny tasks' test sets
    python eval.py --ckpt=out/grpo/ckpt.pt --tasks=countdown --gen_length=96,128 --n=256
    python eval.py --ckpt=checkpoints/tiny-sft.pt --cache=dual --threshold=0.9    # the fast sampler (Fast-dLLM)
    python eval.py --ckpt=out/grpo/ckpt.pt --against=checkpoints/tiny-sft.pt      # and its gain over the SFT model
    python eval.py --table                                   # the tiny d1 table: 4 checkpoints x tasks x 2 lengths
    python eval.py --rescore gens/*_256_*.json               # d1's published LLaDA generations (README)
    python eval.py --model=LLaDA-8B-Instruct --task=gsm8k --gen_length=256   # d1's evaluation of a LLaDA folder
    torchrun --nproc_per_node=8 eval.py --model=LLaDA-8B-Instruct --task=gsm8k --gen_length=256   # on 8 GPUs
    python eval.py --help                                    # every key, its default and meaning

--ckpt and --table follow d1's evaluation protocol (d1 paper, Sec. 4) scaled to the tiny setting:
greedy decoding (temperature 0), low-confidence remasking, blocks of 32, steps = gen_length / 2, on
the tiny tasks' held-out test split. (d1 also prefills the assistant turn with "<reasoning>"; the
tiny model is trained to write it itself, so its tasks' eval_prefix is empty.) Each line reads
    <task> gen_length=<N>: accuracy=<X>% format=<Y>% n=<n> steps=<S>
where format is the share of completions that are exactly "<reasoning>..</reasoning>\\n<answer>..
</answer>" and then stop (end of turn, EOS padding to the end), and S the sampler's mean steps per
batch: d1's protocol takes gen_length / 2, fewer with early stop. Early stop (--early_stop, on in
every mode but --rescore) runs each block for the answers still writing only, and ends a batch once
every answer in it has ended its turn with nothing masked before the end: later steps cannot change
what is scored, so the scores are the protocol's exactly; positions never reached count as padding;
--early_stop=false runs every step. --cache and
--threshold choose the fast sampler of diffusion.generate (Fast-dLLM: Wu et al. 2025, arXiv
2505.22618), which changes the answers a little and takes fewer steps or cheaper ones. --table keeps
each cell's result in out/table/ as it is measured, under a hash of the checkpoint, the settings and
the code (cell_key): run again, it measures only what is missing or changed. Under the table, and
after --ckpt=A --against=B (whose cells are kept there too), each gain is printed with its paired
standard error: both checkpoints answer the same questions, so the gain's error comes from the
questions on which they differ (paired_gain).

--rescore scores d1's published generation files with d1's evaluation parsing. Each file holds
{"generations": [{"question", "generations", "ground_truth"}, ...], "gen_length", ...}; the task is
read from the file name ("gsm8k_instruct_256_128_3_generations.json" is GSM8K) unless --task says.
All files of one task and generation length are pooled into one accuracy, as the paper does. One
line is printed per task and generation length, and the last line reads `accuracy: XX.XX% (C/T)`,
where C/T are the counts behind d1's metric: items for GSM8K, MATH500 and Countdown; empty cells for
Sudoku (its lines also give whole puzzles solved). With several tasks the last line pools them all.
Expected on the gen-length-256 files (the LLaDA-8B-Instruct row of d1's Table 1):
GSM8K 76.37% (1,130 items), MATH500 32.40% (500), Countdown 19.53% (256), Sudoku 6.69% (cells).

--model runs d1's protocol on a LLaDA folder (or a .pt checkpoint) over one of d1's test sets
(--data, default data/<file> as the README downloads it; --n takes the first K items) and writes a
generation file of that layout, after every batch, then prints the --rescore lines for it. Started
again on the same file it continues after the answers already there. Under torchrun the batches
take turns over the processes (batch k on process k mod N), each batch exactly one process's batch
(the same items, so the same padding and answers); after every round of N batches rank 0 collects
them and writes the file, in test-set order: the same file as one process writes. The other modes
run in one process.
"""
import contextlib
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from checkpoint import CheckpointError, check_checkpoint_path, check_model_path, load_any, load_model, write_json
from common import (ConfigError, autocast, check_choice, check_range, cli, one_line_errors, pick_device,
                    pick_dtype, row_slices)
from diffusion import check_fast_sampler, check_sampler, generate
from distributed import all_gather_objects, is_main, launched, print_only_on_main, rank, setup, teardown, world
from tasks_d1 import D1_TASK_NAMES, D1_TASKS, d1_task
from tasks_tiny import get_tiny_tasks
from tokenizer import Tokenizer, end_of_turn

HERE = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# complete(): chat template -> left padding -> sampler -> decode -> score


@dataclass
class Completions:
    """N completions of N (task, example) items, and their scores. Tensors are on the model's device,
    scores on the CPU."""

    prompt_ids: torch.Tensor  # (N, P) chat-templated prompts, left-padded with EOS
    prompt_attention: torch.Tensor  # (N, P) 1 = real prompt token, 0 = left padding
    completion_ids: torch.Tensor  # (N, C) what the sampler wrote
    texts: list  # N completions as text: the task's eval prefix, then the answer up to the end of turn
    rewards: dict  # reward name -> (N,) values (task.rewards)
    reward: torch.Tensor  # (N,) the sum of the named rewards
    correct: torch.Tensor  # (N,) the task's evaluation check, 0..1
    well_formed: torch.Tensor  # (N,) bool: task.format_ok, and the answer stops cleanly
    steps: int = 0  # sampler steps taken, over all sampler calls (one forward pass each); fewer with threshold decoding


def left_pad(sequences, pad_id, pad_to=None):
    """Lists of ids -> (N, P) tensor left-padded with pad_id, and the (N, P) attention mask.
    P is the longest sequence's length, or pad_to if that is more.

    Left padding puts every prompt's last token right before the completion, as the sampler
    needs. Positions stay 0..T-1 along the row, as in LLaDA's own batched generation, so the
    amount of padding changes a row's positions and hence its logits: rows that must sample alike
    in different batches (GRPO's rollouts on several processes) are padded to one pad_to."""
    P = max(max(len(s) for s in sequences), pad_to or 0)
    ids = torch.tensor([[pad_id] * (P - len(s)) + s for s in sequences])
    attention = torch.tensor([[0] * (P - len(s)) + [1] * len(s) for s in sequences])
    return ids, attention


@torch.no_grad()
def complete(model, tok, items, gen_length, block_length=32, steps=None, temperature=0.0,
             remasking="low_confidence", generator=None, prompt="eval", cache=None, threshold=None,
             max_prompt_length=None, batch_size=None, pad_to=None, stop_ids=None, on_step=None):
    """Ask the model every (task, example) of `items` and score the answers with the task.

    prompt: "eval" (task.eval_prompt, and the task's eval_prefix prefilled in the answer, as d1's
    evaluation does) or "rl" (task.rl_prompt, nothing prefilled, as d1's rollouts). steps defaults
    to gen_length / 2 (two tokens per step, d1's setting). cache and threshold: the fast sampler
    (diffusion.generate; None, None = the reference). max_prompt_length: cut longer prompts from the
    left (d1's rollouts: 200). batch_size: rows per sampler call (None: all at once); the memory of
    a call grows with rows x length x vocabulary. pad_to: left-pad the prompts to at least this
    length (left_pad). generator and remasking: one for all rows, or a list with one per item
    (diffusion.generate).
    stop_ids: early stop (diffusion.generate's), the ids that end an answer: evaluate passes the end
    of turn and EOS, GRPO's rollouts EOS alone. Each answer is the same up to its first
    stop, so are its scores; positions after it are never generated (they stay [MASK]).
    on_step(x, step): generate()'s callback, after each step of each sampler call (sample.py --order).
    Returns Completions."""
    check_choice("prompt", prompt, ("eval", "rl"))
    device = next(model.parameters()).device
    prefixes = [task.eval_prefix if prompt == "eval" else "" for task, _ in items]
    messages = [task.eval_prompt(ex) if prompt == "eval" else task.rl_prompt(ex) for task, ex in items]
    encoded = [tok.chat(m) + tok.encode(p) for m, p in zip(messages, prefixes)]
    if max_prompt_length:
        encoded = [ids[-max_prompt_length:] for ids in encoded]
    prompt_ids, attention = left_pad(encoded, tok.eos_id, pad_to)  # (N, P)
    prompt_ids, attention = prompt_ids.to(device), attention.to(device)
    taken = []  # the sampler's step numbers, one per step: how many it took

    def count_step(x, step):
        taken.append(step)
        if on_step is not None:
            on_step(x, step)

    outputs = []
    for rows in row_slices(len(items), batch_size):
        outputs.append(generate(model, prompt_ids[rows], steps=steps or gen_length // 2, gen_length=gen_length,
                                block_length=min(block_length, gen_length), temperature=temperature,
                                remasking=remasking[rows] if isinstance(remasking, list) else remasking,
                                attention_mask=attention[rows],
                                generator=generator[rows] if isinstance(generator, list) else generator,
                                on_step=count_step, cache=cache, threshold=threshold,
                                stop_ids=stop_ids))  # (rows, P + C)
    completion_ids = torch.cat(outputs)[:, prompt_ids.size(1):]  # (N, C)

    # Score every completion with its own task (a batch may mix tasks).
    texts, rewards, correct, well_formed = [], [], [], []
    for (task, ex), prefix, ids in zip(items, prefixes, completion_ids.tolist()):
        text = prefix + end_of_turn(tok.decode(ids))
        texts.append(text)
        rewards.append(task.rewards(text, ex))
        correct.append(task.correct(text, ex))
        well_formed.append(task.format_ok(text) and stops_cleanly(tok, ids))
    names = list(dict.fromkeys(name for r in rewards for name in r))  # tasks may name different rewards
    parts = {name: torch.tensor([r.get(name, 0.0) for r in rewards], dtype=torch.float32) for name in names}
    return Completions(prompt_ids, attention, completion_ids, texts, parts,
                       torch.stack(list(parts.values())).sum(0), torch.tensor(correct, dtype=torch.float32),
                       torch.tensor(well_formed), len(taken))


def eval_stop_ids(tok, early_stop):
    """The evaluation's early stop: an answer ends at its end of turn (or EOS); None = every step."""
    return (tok.eot_id, tok.eos_id) if early_stop else None


def stops_cleanly(tok, ids):
    """The answer ends with <|eot_id|> or EOS and only EOS padding follows (what SFT teaches); [MASK]
    there is a position an early-stopped sampler never reached (complete's stop_ids)."""
    stops = [i for i, t in enumerate(ids) if t in (tok.eot_id, tok.eos_id)]
    return bool(stops) and all(t in (tok.eos_id, tok.eot_id, tok.mask_id) for t in ids[stops[0]:])


# -----------------------------------------------------------------------------
# The tiny tasks: one checkpoint, or the table of four


def evaluate(model, tok, task, examples, gen_length, batch_size=64, dtype="auto", cache=None, threshold=None,
             early_stop=True):
    """Greedy completions for `examples`, scored by task.correct and the format check.

    Returns dict(accuracy, stderr, format, n, steps, scores); accuracy and format in percent. The
    standard error is that of a mean over items (Sudoku items score the share of their empty cells
    right). cache, threshold: complete()'s fast sampler. early_stop: each batch ends once all its
    answers have ended (complete(); the same scores in fewer steps). steps is the sampler's mean
    steps per batch (d1's protocol: gen_length / 2); scores the items' own scores, in test-set
    order, which compare two checkpoints question by question (paired_gain)."""
    device = next(model.parameters()).device
    model.eval()
    scores, well_formed, steps = [], [], []
    for i in range(0, len(examples), batch_size):
        with autocast(device, dtype):
            done = complete(model, tok, [(task, ex) for ex in examples[i: i + batch_size]], gen_length,
                            cache=cache, threshold=threshold, stop_ids=eval_stop_ids(tok, early_stop))
        scores += done.correct.tolist()
        well_formed += done.well_formed.tolist()
        steps.append(done.steps)
    accuracy, stderr = mean_and_stderr(scores)
    return {"accuracy": accuracy, "stderr": stderr, "n": len(scores), "format": 100 * sum(well_formed) / len(scores),
            "steps": sum(steps) / len(steps), "scores": scores}


def mean_and_stderr(values):
    """The mean of per-item values (scores in 0..1, or differences of two), and its standard error,
    both in percent (points)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(1, n - 1)
    return 100 * mean, 100 * math.sqrt(var / n)


def paired_gain(new, old, columns):
    """How much `new` beats `old` (eval_checkpoint results of two checkpoints) in each column and on
    average, in points, each with its paired standard error: {column or "average": (gain, stderr)}.

    Both were scored on the same questions, so the gain is the mean of the per-question differences
    new_i - old_i and its standard error sd(new_i - old_i) / sqrt(n). Where the two models get
    most questions equally right or wrong this is much smaller than sqrt(se_new^2 + se_old^2), the
    error of two models scored on two independent test sets. The average's differences are each
    question's mean over the columns (question i of every task and length): the tasks' questions are
    drawn independently, so the same formula holds."""
    differences = {c: [a - b for a, b in zip(new[c]["scores"], old[c]["scores"], strict=True)] for c in columns}
    gains = {c: mean_and_stderr(d) for c, d in differences.items()}
    gains["average"] = mean_and_stderr([sum(d) / len(columns) for d in zip(*differences.values(), strict=True)])
    return gains


def eval_checkpoint(path, task_names="all", gen_lengths=(96, 128), n=256, batch_size=64, device="auto",
                    dtype="auto", quiet=False, cache=None, threshold=None, kept_in=None, early_stop=True):
    """Evaluate one checkpoint on the tiny tasks' test sets: {(task, gen_length): result dict}.
    Each line also gives the sampler's steps per batch (fewer than gen_length / 2 with early_stop,
    see evaluate, or the fast sampler: cache or threshold).
    kept_in: a folder that keeps each (task, gen_length) result (the table's, TABLE_CELLS); a result
    found there is read instead of measured (see cell_key)."""
    device = pick_device(device)
    key = cell_key(path, n, batch_size, device, pick_dtype(dtype, device), cache, threshold, early_stop) \
        if kept_in else None
    model, tok = None, Tokenizer.tiny()
    results = {}
    for task in get_tiny_tasks(task_names):
        examples = task.examples("test", n)
        for gen_length in gen_lengths:
            kept = Path(kept_in) / f"{Path(path).stem}-{task.name}-{gen_length}-{key}.json" if kept_in else None
            if kept and kept.is_file():
                r = json.loads(kept.read_text())
            else:
                model = model or load_model(path, device=device)[0]  # loaded only if a result is missing
                r = evaluate(model, tok, task, examples, gen_length, batch_size, dtype, cache, threshold, early_stop)
                if kept:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    write_json(kept, r)
            results[(task.name, gen_length)] = r
            if not quiet:
                print(f"{task.name} gen_length={gen_length}: accuracy={r['accuracy']:.1f}% "
                      f"format={r['format']:.1f}% n={r['n']} steps={r['steps']:.1f}", flush=True)
    return results


# What a table cell's result depends on besides the checkpoint and the settings: the code that
# samples and scores it.
CELL_SOURCES = ("eval.py", "diffusion.py", "model.py", "checkpoint.py", "tasks.py", "tasks_tiny.py", "scoring.py",
                "tokenizer.py", "tokenizer_tiny.bpe")


def cell_key(path, n, batch_size, device, dtype, cache, threshold, early_stop):
    """A hash of everything a tiny-task result depends on: the checkpoint's bytes, the evaluation
    settings (the batch size sets the left padding), torch's version and CELL_SOURCES. A kept result
    is reused only while all of them are unchanged, so it is never stale."""
    digest = hashlib.sha256(Path(path).read_bytes())
    for name in CELL_SOURCES:
        digest.update((HERE / name).read_bytes())
    digest.update(repr((n, batch_size, str(device), dtype, cache, threshold, early_stop, torch.__version__)).encode())
    return digest.hexdigest()[:16]


TABLE_ROWS = (("base (pretrained)", "checkpoints/tiny-base.pt"), ("+SFT", "checkpoints/tiny-sft.pt"),
              ("+diffu-GRPO", "checkpoints/tiny-grpo.pt"), ("d1 (SFT + diffu-GRPO)", "checkpoints/tiny-d1.pt"))
# The table keeps each cell's result here as it is measured (eval_checkpoint's kept_in), so an
# interrupted table resumes, and a retrained row is the only one measured again.
TABLE_CELLS = Path("out/table")
# Each row's gain over the row its checkpoint was trained from, as d1's Table 1 is read (RL over the
# base, d1 over SFT): (row, the row it started from); printed under the table (paired_gain)
TABLE_GAINS = (("+SFT", "base (pretrained)"), ("+diffu-GRPO", "base (pretrained)"), ("d1 (SFT + diffu-GRPO)", "+SFT"),
               ("d1, coupled estimator", "+SFT"), ("d1, ELBO estimator", "+SFT"))
# d1 with a later likelihood estimator (README, "Other likelihood estimators"): a row when its
# checkpoint exists; (name, checkpoint, --estimator)
ESTIMATOR_ROWS = (("d1, coupled estimator", "checkpoints/tiny-d1-coupled.pt", "coupled"),
                  ("d1, ELBO estimator", "checkpoints/tiny-d1-elbo.pt", "elbo"))


def table_rows():
    """The table's (name, checkpoint) rows: the four of d1's Table 1, then each estimator row whose
    checkpoint exists; for the others, one line says how to train it."""
    rows = list(TABLE_ROWS)
    for name, path, estimator in ESTIMATOR_ROWS:
        if Path(path).is_file():
            rows.append((name, path))
        else:
            print(f"(no row '{name}': {path} is not trained; python train.py --stage grpo "
                  f"--estimator={estimator} --out_dir=out/d1-{estimator} --export={path})")
    return rows


def print_table(task_names="all", gen_lengths=(96, 128), n=256, batch_size=64, device="auto", dtype="auto",
                cache=None, threshold=None, early_stop=True):
    """The tiny d1 table: accuracy (standard error) per checkpoint, task and generation length."""
    rows = table_rows()
    for _, path in rows:
        if not Path(path).is_file():
            raise CheckpointError(f"{path} is missing: train it first (README, 'The tiny d1 table')")
    tasks = [t.name for t in get_tiny_tasks(task_names)]
    columns = [(t, g) for t in tasks for g in gen_lengths]
    results_of = []
    for name, path in tqdm(rows, desc="table"):
        results = eval_checkpoint(path, task_names, gen_lengths, n, batch_size, device, dtype, True, cache, threshold,
                                  kept_in=TABLE_CELLS, early_stop=early_stop)
        results_of.append((name, results))
    header = ("| model | " + " | ".join(f"{t} {g}" for t, g in columns) + " | average |\n"
              + "|---" * (len(columns) + 2) + "|")
    sampler = f"cache={cache}, threshold={threshold}" if cache or threshold else "steps = gen_length / 2"
    print(f"\nTiny d1 table: accuracy % (standard error), greedy, {sampler}, n = {n} per cell "
          f"(each cell kept in {TABLE_CELLS}/ and reused while its checkpoint and the code are unchanged)\n")
    print(header)
    for name, results in results_of:
        cells = " | ".join(f"{results[c]['accuracy']:.1f} ({results[c]['stderr']:.1f})" for c in columns)
        average = sum(results[c]["accuracy"] for c in columns) / len(columns)
        print(f"| {name} | {cells} | {average:.1f} |")
    print("\nFormat: % of completions well formed and stopping with EOS padding\n")
    print(header)
    for name, results in results_of:
        formats = [results[c]["format"] for c in columns]
        print(f"| {name} | " + " | ".join(f"{f:.1f}" for f in formats) + f" | {sum(formats) / len(formats):.1f} |")
    results_by_name = dict(results_of)
    print_gains([(f"{new} over {old}", results_by_name[new], results_by_name[old])
                 for new, old in TABLE_GAINS if new in results_by_name and old in results_by_name], columns)


def print_gains(comparisons, columns):
    """One table line per (label, new results, old results): paired_gain per column and on average,
    in points (paired standard error), then how many standard errors that is ("-" where the error is
    0: the two differ alike on every question, or not at all). Nothing if no comparisons."""
    if not comparisons:
        return
    print("\nGain in points (paired standard error: both checkpoints answer the same questions), "
          "then gain / standard error\n")
    print("| gain | " + " | ".join(f"{t} {g}" for t, g in columns) + " | average |\n" + "|---" * (len(columns) + 2) + "|")
    for label, new, old in comparisons:
        gains = paired_gain(new, old, columns)
        cells = [f"{gain:+.1f} ({stderr:.1f}; {f'{gain / stderr:+.1f}' if stderr else '-'})" for gain, stderr in gains.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")


# -----------------------------------------------------------------------------
# d1's published generations, rescored with d1's evaluation parsing


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
    """The task of a generation file: named at the start of its name, e.g. "math500_instruct_...json"
    (d1's files), else its "task" field (the files eval.py --model writes)."""
    name = path.name.split("_")[0]
    if name in D1_TASKS:
        return name
    with contextlib.suppress(ValueError, OSError, AttributeError):
        name = json.loads(path.read_text()).get("task")
    if name not in D1_TASKS:
        raise ValueError(f"{path}: cannot tell the task from the file name (it starts with none of "
                         f"{', '.join(f'{t}_' for t in D1_TASKS)}) or a \"task\" field; pass --task=TASK")
    return name


def read_generations(path: Path) -> tuple[list[dict], int | None]:
    """The records of one generation file, and its generation length (from the file, else its name)."""
    try:
        data = json.loads(path.read_text())
        records = data["generations"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
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
                item = D1_TASKS[name].from_generation(record)
                correct, total = D1_TASKS[name].correct_counts(record["generations"], item)
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


# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# d1's evaluation of a LLaDA model on one of d1's test sets, written as d1's generation files

DEFAULT_TEST_FILES = {"gsm8k": "data/gsm8k_test.jsonl", "math500": "data/math500_test.jsonl",
                      "countdown": "data/countdown_cd3_test.jsonl", "sudoku": "data/4x4_test_sudoku.csv"}


def eval_model(cfg):
    """d1's protocol on a test set (greedy, low-confidence remasking, block 32, steps = gen_length / 2,
    the eval prompts with "<reasoning>" prefilled, left-padded batches), one generation file per
    length in the layout of d1's published files. Each batch's answers are written at once (the whole
    file, atomically), so an interrupted run continues where it stopped. Returns the files.

    Under torchrun, rounds of N batches, one per process (the module docstring):
        batches    b0 b1 b2 b3 b4       5 batches of --batch_size items, 2 processes
        round 0    rank 0: b0, rank 1: b1    -> rank 0 writes b0 b1
        round 1    rank 0: b2, rank 1: b3    -> rank 0 writes b0 .. b3
        round 2    rank 0: b4, rank 1: none  -> rank 0 writes b0 .. b4"""
    task = d1_task(cfg.task)
    items = task.load(cfg.data or DEFAULT_TEST_FILES[task.name])[:cfg.n]
    device = setup(pick_device(cfg.device))  # under torchrun: this process's GPU, or gloo on CPUs
    print_only_on_main()
    model, tok = load_any(cfg.model, device)
    model.eval()
    files = []
    for gen_length in cfg.gen_length:
        name = f"{task.name}_{Path(cfg.model).stem}_{gen_length}_{gen_length // 2}_generations.json"
        path = Path(cfg.out) if cfg.out else Path("out/eval") / name
        meta = {"task": task.name, "model_path": str(cfg.model), "gen_length": gen_length,
                "diffusion_steps": gen_length // 2, "block_length": min(32, gen_length), "cache": cfg.cache,
                "threshold": cfg.threshold}
        records = earlier_records(path, meta, task, items)  # every process reads the same file
        starts = range(len(records), len(items), cfg.batch_size)  # the batches still to do
        t0 = time.time()
        bar = tqdm(total=math.ceil(len(items) / cfg.batch_size), initial=len(records) // cfg.batch_size,
                   desc=f"{task.name} gen {gen_length}", disable=not is_main())
        for first in range(0, len(starts), world()):  # a round: batches first .. first + N - 1
            mine = starts[first:first + world()][rank():rank() + 1]  # this process's batch: one, or none
            answers = []
            for start in mine:
                batch = items[start:start + cfg.batch_size]
                with autocast(device, cfg.dtype):
                    done = complete(model, tok, [(task, item) for item in batch], gen_length, cache=cfg.cache,
                                    threshold=cfg.threshold, stop_ids=eval_stop_ids(tok, cfg.early_stop))
                # d1's files hold the answer after the prefilled "<reasoning>", and the bare question
                answers += [task.generation_record(item, text.removeprefix(task.eval_prefix))
                            for item, text in zip(batch, done.texts)]
            records += [record for part in all_gather_objects(answers) for record in part]  # in rank order
            bar.update(len(starts[first:first + world()]))
            if is_main():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json(path, {"generations": records, **meta,
                                  "metrics": {"wall_time": time.time() - t0, "total_processed": len(records)}})
        bar.close()
        if is_main():
            print_scores(rescore([path], task.name))
        files.append(path)
    return files


def earlier_records(path, meta, task, items):
    """The records an interrupted run left in `path`, checked to be this run's (same settings, the
    same questions in the same order), or [] for a new file. Anything else is refused, not
    overwritten."""
    if not path.exists():
        return []
    records, _ = read_generations(path)
    saved = json.loads(path.read_text())
    changed = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in meta.items() if saved.get(k) != v]
    questions = [task.generation_record(item, "")["question"] for item in items[:len(records)]]
    if changed or len(records) > len(items) or [r.get("question") for r in records] != questions:
        why = ", ".join(changed) or "other questions"
        raise ValueError(f"{path} holds the generations of another run ({why}); pass another --out "
                         "or remove it")
    if records:
        print(f"{path}: continuing after the {len(records)} answers already there")
    return records


# -----------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Evaluate a checkpoint, print the tiny d1 table, rescore d1's generation files, or run d1's
    evaluation of a LLaDA model."""

    ckpt: str = ""  # mode 1: a project checkpoint to evaluate on the tiny tasks' test sets
    table: bool = False  # mode 2: the tiny d1 table (the shipped checkpoints: four rows, then the estimator rows)
    rescore: tuple[str, ...] = ()  # mode 3: d1 generation .json files, scored with d1's evaluation parsing
    model: str = ""  # mode 4: a LLaDA folder (or .pt) evaluated on d1's --task, writing d1's generation file
    task: str = ""  # --model: gsm8k, math, countdown or sudoku; --rescore: the task, when file names do not tell
    data: str = ""  # --model: the test set file (default: data/<file> as in README, 'd1 at full scale')
    out: str = ""  # --model: the generation file (default out/eval/<task>_<model>_<gen>_<steps>_generations.json)
    against: str = ""  # --ckpt: a second checkpoint; also prints the first's gain over it (paired standard errors)
    tasks: str = "all"  # --ckpt/--table: tiny tasks, comma-separated, or all
    gen_length: tuple[int, ...] = ()  # generation lengths (<= 32 or multiples of 32); --ckpt/--table: 96,128
    n: int | None = None  # test questions per task; none = 256 for --ckpt/--table, all for --model
    batch_size: int = 64  # questions decoded together (LLaDA-8B at gen 256 on 24 GB: 8)
    device: str = "auto"  # auto -> cuda, then mps, then cpu
    dtype: str = "auto"  # autocast dtype: bfloat16, float32, or auto (bf16 where this device runs it fast)
    cache: str | None = None  # fast sampler's KV cache: none (d1's protocol), prefix or dual
    threshold: float | None = None  # parallel decoding threshold in (0, 1], e.g. 0.9; none = off (d1's protocol)
    early_stop: bool = True  # end a batch once all its answers have ended: the same scores, fewer steps

    def __post_init__(self):
        modes = [name for name in ("ckpt", "table", "rescore", "model") if getattr(self, name)]
        if len(modes) != 1:
            raise ConfigError("give exactly one of --ckpt=FILE, --table, --rescore FILE..., --model=DIR"
                              + (f" (got {', '.join('--' + m for m in modes)})" if modes else ""))
        if self.task:
            check_choice("task", self.task, D1_TASK_NAMES)
            self.task = d1_task(self.task).name  # "math" is MATH500's
        for path in map(Path, self.rescore):  # every file is checked before any is scored
            if not path.is_file():
                raise ConfigError(f"--rescore: {path}: " + ("is a folder" if path.is_dir() else "no such file"))
            if not self.task:
                task_of(path)
        if self.ckpt:
            check_checkpoint_path(self.ckpt)
        if self.against:
            if not self.ckpt:
                raise ConfigError("--against goes with --ckpt: the checkpoint whose gain over it is printed")
            check_checkpoint_path(self.against)
        if self.model:
            self._check_model_mode()
        elif self.data or self.out:
            raise ConfigError("--data and --out go with --model")
        if not self.gen_length:
            self.gen_length = (96, 128)
        if self.n is None:
            self.n = 256 if (self.ckpt or self.table) else None
        else:
            check_range(self, 1, None, "n")
        check_range(self, 1, None, "batch_size")
        self.dtype = pick_dtype(self.dtype, pick_device(self.device))  # checks the name; "auto" -> what runs fast here
        for g in self.gen_length:
            check_sampler(g, min(32, g), g // 2)
        check_fast_sampler(self.cache, self.threshold)

    def _check_model_mode(self):
        check_model_path(self.model, "model")
        if not self.task:
            raise ConfigError("--model needs --task: gsm8k, math, countdown or sudoku")
        if not self.gen_length:
            raise ConfigError("--model needs --gen_length (d1's Table 1: 128, 256 and 512)")
        if self.out and len(self.gen_length) > 1:
            raise ConfigError("--out names one file: give one --gen_length with it")
        data = Path(self.data or DEFAULT_TEST_FILES[self.task])
        if not data.is_file():
            raise ConfigError(f"--data={data}: no such file; download d1's test set (README, 'd1 at full scale') "
                              "or pass --data=FILE")


def evaluate_ckpt(cfg):
    """--ckpt: one checkpoint's results; with --against, the other's too and the first's gain over it.
    Compared results are kept in the table's folder (TABLE_CELLS), so a shipped checkpoint that the
    table measured with the same settings is read back, not measured again."""
    kept_in = TABLE_CELLS if cfg.against else None
    evaluate_one = lambda path: eval_checkpoint(path, cfg.tasks, cfg.gen_length, cfg.n, cfg.batch_size,  # noqa: E731
                                                cfg.device, cfg.dtype, cache=cfg.cache, threshold=cfg.threshold,
                                                kept_in=kept_in, early_stop=cfg.early_stop)
    results = evaluate_one(cfg.ckpt)
    if cfg.against:
        print(f"against {cfg.against}:")
        baseline = evaluate_one(cfg.against)
        print_gains([(f"{cfg.ckpt} over {cfg.against}", results, baseline)], list(results))


def main(argv=None):
    try:
        run(argv)
    finally:
        teardown()  # leave torchrun's process group (if --model joined one)


def run(argv):
    with one_line_errors("eval.py"):
        cfg = cli(EvalConfig, sys.argv[1:] if argv is None else argv)
        if launched() and not cfg.model:
            raise ConfigError("--ckpt, --table and --rescore run in one process: start them with python, "
                              "not torchrun (--model runs on several)")
        if cfg.rescore:
            print_scores(rescore(cfg.rescore, cfg.task or None))
        elif cfg.model:
            eval_model(cfg)
        elif cfg.ckpt:
            evaluate_ckpt(cfg)
        else:
            print_table(cfg.tasks, cfg.gen_length, cfg.n, cfg.batch_size, cfg.device, cfg.dtype, cfg.cache,
                        cfg.threshold, cfg.early_stop)


if __name__ == "__main__":
    main()
