"""tasks_tiny.py: the generated tiny tasks. Same data as the code the shipped checkpoints were trained
with, disjoint splits, solvable puzzles, SFT traces that pass their own checks, rewards by hand."""
import hashlib
import itertools
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scoring
from tasks import TaskError
from tasks_tiny import (TINY_TASKS, Example, TinyArith, TinyCountdown, TinySudoku, get_tiny_tasks,
                        pretrain_corpus, sample_items, sudoku_grids, sudoku_solutions,
                        train_tiny_tokenizer)
from tokenizer import EOS, EOT, TINY_MERGES

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the same data as before

def _digest(obj) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


# Produced by the code before tasks.py was split (commit 2b1b145), which made the shipped base's data:
# a change here changes every pretraining batch, SFT row and RL question. Sudoku's SFT, RL and test
# puzzles have had 8-12 blanks and traces of three lines at most since (README, "Moving the table",
# item 12); its pretraining texts kept their 4-8 blanks and a line per round, so "pretrain" holds.
# TinyArith(restate=False), item 23, writes each result once in its SFT traces ("arith once"); the
# pretraining corpus keeps the restated ones whatever the knob says ("pretrain reasoning").
FIRST_PRETRAIN_TEXTS = ["1342\n4213\n2431\n3124", "8*1=8", "Sudoku: 2130401210203240\n2134431214233241"]
DIGESTS = {"pretrain": "978019e0be980df9", "pretrain reasoning": "b1fbe7c43e0f979c", "countdown": "d4693421ab5c1210",
           "sudoku": "b55756b4167a80ba", "arith": "13fd6af75fa36e82", "arith once": "620eb8f5006c0cfb",
           "grids": "8216d19513a4a3f6"}


def test_generators_reproduce_the_original_data():
    assert list(itertools.islice(pretrain_corpus(seed=0), 3)) == FIRST_PRETRAIN_TEXTS
    assert [task.eval_prompt(ex) for task, ex in sample_items()] == ["Numbers: [8, 8, 5]\nTarget: 4", "Sudoku: 0210040001202001",
                                "Uma has 2 keys, buys 7, sells 3, buys 2. How many?"]
    arith = TINY_TASKS["arith"]
    assert arith.examples("train", 2) == [
        Example("Ivy has 5 keys, sells 2, finds 6. How many?", 9, "5-2+6", numbers=(5,),
                steps=(("-", 2), ("+", 6))),
        Example("Sam has 9 toys, uses 3, gives 6. How many?", 0, "9-3-6", numbers=(9,),
                steps=(("-", 3), ("-", 6)))]
    first_traces = {  # the first two SFT traces of each task, rng = random.Random(0), backtrack 0.3
        "arith": ["<reasoning>5-2=3\n3+6=9</reasoning>\n<answer>9</answer>",
                  "<reasoning>9-3=6\n6-6=0</reasoning>\n<answer>0</answer>"],
        "arith once": ["<reasoning>5-2=3\n+6=9</reasoning>\n<answer>9</answer>",
                       "<reasoning>9-3=6\n-6=0</reasoning>\n<answer>0</answer>"],
        "countdown": ["<reasoning>5*3=15, 15-8=7 yes</reasoning>\n<answer>5*3-8</answer>",
                      "<reasoning>9+3=12, 12+6=18 no\n6-3=3, 9/3=3 yes</reasoning>\n<answer>9/(6-3)</answer>"],
        "sudoku": ["<reasoning>4312210034201243\n4312213434211243</reasoning>\n<answer>4312213434211243</answer>",
                   "<reasoning>0020201430000132\n0023231430414132\n1423231432414132</reasoning>\n"
                   "<answer>1423231432414132</answer>"]}
    digests = {"pretrain": _digest(list(itertools.islice(pretrain_corpus(seed=0), 2000))),
               "pretrain reasoning": _digest(list(itertools.islice(pretrain_corpus(seed=0, chat_reasoning=0.5), 2000))),
               "grids": _digest(sudoku_grids())}
    for name, task in {**TINY_TASKS, "arith once": TinyArith(restate=False)}.items():
        train, test = task.examples("train", 500), task.examples("test", 100)
        rng = random.Random(0)
        traces = [task.sft_response(ex, rng, backtrack=0.3) for ex in train]  # pinned with the old default
        assert traces[:2] == first_traces[name]
        fields = [(ex.prompt, ex.answer, ex.key, ex.numbers, ex.steps, ex.puzzle) for ex in train + test]
        digests[name] = _digest((fields, traces))
    assert digests == DIGESTS


# ----------------------------------------------------------------------------- splits and puzzles

def test_same_seed_same_data_and_disjoint_splits():
    for cls in (TinyArith, TinyCountdown, TinySudoku):
        a, b, c = cls(seed=1), cls(seed=1), cls(seed=2)
        train, test = a.examples("train", 1000), a.examples("test", 250)
        assert train == b.examples("train", 1000) and test == b.examples("test", 250)
        assert train[:100] == a.examples("train", 100)  # a longer list starts the same
        assert train[:100] != c.examples("train", 100)
        assert len({ex.key for ex in train}) == len(train)
        assert not {ex.key for ex in train} & {ex.key for ex in test}
    sudoku = TinySudoku()
    assert len(sudoku_grids()) == 288 and len(set(sudoku_grids())) == 288
    assert len(sudoku.grids["test"]) == 29
    train_grids = {ex.answer for ex in sudoku.examples("train", 3000)}
    assert not train_grids & {ex.answer for ex in sudoku.examples("test", 300)}


def test_every_puzzle_is_solvable():
    countdown = TinyCountdown()
    for ex in countdown.examples("test", 200):
        expr, _ = countdown.solution(ex, random.Random(0))
        assert scoring.countdown_correct(expr, ex.numbers, ex.answer)
        assert ex.prompt == f"Numbers: [{', '.join(map(str, ex.numbers))}]\nTarget: {ex.answer}"
    for ex in TINY_TASKS["sudoku"].examples("test", 200):
        assert sudoku_solutions(ex.puzzle) == [ex.answer] and 8 <= ex.puzzle.count("0") <= 12
    for ex in TinyArith().examples("test", 200):
        value = ex.numbers[0]
        for op, b in ex.steps:
            value = {"+": value + b, "-": value - b, "*": value * b, "/": value / b}[op]
        assert value == ex.answer and value >= 0


@pytest.mark.parametrize("name, longest", [("arith", 100), ("countdown", 100), ("sudoku", 130)])
def test_sft_and_direct_answers_pass_their_own_checks(name, longest):
    task, rng = TINY_TASKS[name], random.Random(0)
    responses = []
    for ex in task.examples("train", 300):
        for response in (task.sft_response(ex, rng, backtrack=0.3), task.direct_response(ex)):
            assert task.format_ok(response + EOT + EOS) and task.correct(response, ex) == 1.0, response
            responses.append(response)
        assert len(ex.prompt) <= 55
        assert task.rl_prompt(ex) == task.eval_prompt(ex) == ex.prompt and task.eval_prefix == ""
    assert max(map(len, responses)) <= longest
    backtracked = sum(" no" in r for r in responses) / (len(responses) / 2)
    assert 0.2 < backtracked < 0.4  # the share of self-correcting traces asked for: 0.3


@pytest.mark.parametrize("trace_lines", [2, 3])
def test_sudoku_traces_write_the_first_rounds_then_the_solution(trace_lines):
    task, rng = TinySudoku(trace_lines=trace_lines), random.Random(0)
    capped = 0
    for ex in task.examples("train", 300):
        rounds = task._rounds(ex)  # the pretraining corpus's worked puzzle: a line per round
        lines = task.sft_response(ex, rng, backtrack=0.0).split("</reasoning>")[0].split("\n")
        lines[0] = lines[0].removeprefix("<reasoning>")
        assert len(lines) == min(len(rounds), trace_lines) and lines[-1] == rounds[-1] == ex.answer
        assert lines[:-1] == rounds[:len(lines) - 1]  # the first rounds, in order
        assert rounds[0].count("0") < ex.puzzle.count("0")
        capped += len(rounds) > trace_lines
    assert capped > 20  # 3-5 rounds are common at 8-12 blanks: the cap is exercised


def test_arith_traces_without_restating_write_each_result_once_and_the_corpus_keeps_the_restated_ones():
    task, restated = TinyArith(restate=False), TinyArith()

    def reasoning(task, ex, seed, backtrack):
        return task.sft_response(ex, random.Random(seed), backtrack).split("</reasoning>")[0][len("<reasoning>"):].split("\n")

    for ex in task.examples("train", 200):
        lines, old, steps = reasoning(task, ex, 0, 0.0), reasoning(restated, ex, 0, 0.0), task._lines(ex)
        assert lines[0] == old[0] == "{}{}{}={}".format(*steps[0])
        for line, old_line, (value, op, b, result) in zip(lines[1:], old[1:], steps[1:]):
            assert line == f"{op}{b}={result}" and old_line == f"{value}{line}"  # the result above, once
        # backtracking keeps the form: a wrong try of one line, in that line's form, then the clean trace
        slipped = reasoning(task, ex, 1, 1.0)
        [wrong] = [i for i, line in enumerate(slipped) if line.endswith(" no")]
        assert slipped[:wrong] + slipped[wrong + 1:] == lines
        assert slipped[wrong].split("=")[0] == slipped[wrong + 1].split("=")[0]
    # the pretraining corpus's reasoning chats keep the restated traces the shipped base read
    rng = random.Random(5)
    chat = next(t for t in task.pretrain_texts(rng, chat_reasoning=1.0) if "<reasoning>" in t and "\n" in t.split("<reasoning>")[1])
    chat_lines = chat.split("<reasoning>")[1].split("</reasoning>")[0].split("\n")
    assert all(line[0].isdigit() for line in chat_lines)


# ----------------------------------------------------------------------------- rewards

def test_tiny_rewards_on_hand_written_completions():
    arith = TinyArith()
    ex = Example("Ann has 3 pens, buys 4, loses 2. How many?", 5, "3+4-2", numbers=(3,),
                 steps=(("+", 4), ("-", 2)))
    good = "<reasoning>3+4=7\n7-2=5</reasoning>\n<answer>5</answer>"
    assert arith.rewards(good, ex) == {"correct": 2.0, "format": 0.5}
    after_eot = good + EOT + "<answer>6</answer>"  # what follows the end of the turn is ignored
    assert arith.rewards(after_eot, ex) == {"correct": 2.0, "format": 0.5}
    assert arith.rewards(good.replace(">5<", ">6<"), ex) == {"correct": 0.0, "format": 0.5}
    assert arith.rewards(good + " extra", ex) == {"correct": 2.0, "format": 0.0}
    assert arith.rewards(good + "\n<answer>6</answer>", ex) == {"correct": 0.0, "format": 0.0}  # repeated
    assert arith.rewards("<answer>5</answer>", ex) == {"correct": 2.0, "format": 0.0}  # no reasoning
    assert arith.rewards("<reasoning>5</reasoning>\n<answer> 5.0 </answer>", ex)["correct"] == 0.0
    assert arith.rewards("5", ex) == {"correct": 0.0, "format": 0.0}
    assert arith.format_ok("<reasoning>a\nb\n</reasoning>\n<answer>5</answer>\n")  # multi-line, blank after
    assert not arith.format_ok("<reasoning>a</reasoning><answer>5</answer>")  # the newline is required

    countdown = TinyCountdown()
    ex = Example("Numbers: [3, 5, 7]\nTarget: 22", 22, "[3, 5, 7]->22", numbers=(3, 5, 7))
    right = "<reasoning></reasoning>\n<answer>7+3*5</answer>"
    assert countdown.rewards(right, ex) == {"correct": 1.0, "format": 0.0}
    assert countdown.rewards("<answer>(7+3)*5</answer>", ex) == {"correct": 0.0, "format": 0.1}
    assert countdown.rewards("<answer>7+3*5=22</answer>", ex) == {"correct": 0.0, "format": 0.1}
    assert countdown.rewards("7+3*5", ex) == {"correct": 0.0, "format": 0.0}

    sudoku = TinySudoku()
    puzzle = "1204340021034021"
    ex = Example(f"Sudoku: {puzzle}", "1234341221434321", puzzle, puzzle=puzzle)
    assert sudoku.rewards("<answer>1234341221434321</answer>", ex) == {"correct": 1.0}
    assert sudoku.rewards("<answer>1234 3412 2100 4321</answer>", ex) == {"correct": 0.8}
    assert sudoku.rewards("<answer></answer>", ex) == {"correct": 0.0}


# ----------------------------------------------------------------------------- the pretraining corpus

def test_pretrain_corpus():
    a, b = pretrain_corpus(seed=3), pretrain_corpus(seed=3)
    texts = [next(a) for _ in range(600)]
    assert texts == [next(b) for _ in range(600)]
    chats = [t for t in texts if t.endswith(EOT + EOS)]
    assert 50 < len(chats) < 150 and all("<reasoning></reasoning>\n<answer>" in t for t in chats)
    for name, question in (("sudoku", "Sudoku: "), ("countdown", "Numbers: "), ("arith", "How many?")):
        answers = [t.split("<|end_header_id|>\n\n")[-1] for t in chats if question in t]
        assert answers and all(TINY_TASKS[name].format_ok(a) for a in answers)
    test_grids = set(TINY_TASKS["sudoku"].grids["test"])
    test_countdown = {ex.prompt for ex in TINY_TASKS["countdown"].examples("test")}
    for t in texts:
        assert not test_grids & set(re.findall(r"\d{16}", t.replace("\n", "")))
        assert not test_countdown & set(re.findall(r"Numbers: \[[\d, ]*\]\nTarget: \d+", t))
    only = pretrain_corpus(seed=0, tasks=["sudoku"])
    for t in (next(only) for _ in range(50)):
        assert "Sudoku" in t or re.fullmatch(r"(\d{4}\n){3}\d{4}", t)
    # the base model's puzzles are easier than the task's: 4-8 blanks, where SFT, RL and tests have 8-12
    blanks = [p.count("0") for t in itertools.islice(only, 300) for p in re.findall(r"Sudoku: (\d{16})", t)]
    assert len(blanks) > 50 and set(blanks) == set(range(4, 9))


def _rebuilt_example(question: str) -> tuple:
    """(task, Example) read back from a tiny question alone, for texts whose Example is not at hand."""
    if question.startswith("Sudoku: "):
        puzzle = question.removeprefix("Sudoku: ")
        (grid,) = sudoku_solutions(puzzle)
        return TINY_TASKS["sudoku"], Example(question, grid, puzzle, puzzle=puzzle)
    if question.startswith("Numbers: "):
        *numbers, target = map(int, re.findall(r"\d+", question))
        return TINY_TASKS["countdown"], Example(question, target, question, numbers=tuple(numbers))
    start, moves = re.fullmatch(r"\w+ has (\d) \w+, (.*)\. How many\?", question).groups()
    verbs = {phrase.split()[0]: op for op, phrases in TinyArith.PHRASES.items() for phrase in phrases}
    value = int(start)
    for verb, amount in (move.split() for move in moves.split(", ")):
        value += int(amount) if verbs[verb] == "+" else -int(amount)
    return TINY_TASKS["arith"], Example(question, value, question, numbers=(int(start),))


def test_pretrain_corpus_with_reasoning_chats():
    """chat_reasoning=S: a share S of the chats answers with the task's SFT trace, each right; S=0 is
    pretrain_corpus's default (the corpus of the bases before the shipped one, which pretraining
    draws with 0.5), whose digest test_generators_reproduce_the_original_data pins."""
    assert (list(itertools.islice(pretrain_corpus(seed=5, chat_reasoning=0.0), 300))
            == list(itertools.islice(pretrain_corpus(seed=5), 300)))
    texts = list(itertools.islice(pretrain_corpus(seed=5, chat_reasoning=0.5), 1200))
    chats = [t for t in texts if t.endswith(EOT + EOS)]
    reasoning = [t for t in chats if "<reasoning></reasoning>" not in t]
    assert 0.35 < len(reasoning) / len(chats) < 0.65
    for text in reasoning:
        _, question, answer = text.split("<|end_header_id|>\n\n")
        task, ex = _rebuilt_example(question.removesuffix(EOT + "<|start_header_id|>assistant"))
        assert task.format_ok(answer) and task.correct(answer, ex) == 1.0 and " no" not in answer, text


def test_get_tiny_tasks():
    assert get_tiny_tasks() == list(TINY_TASKS.values())
    assert get_tiny_tasks(" sudoku,arith ") == [TINY_TASKS["sudoku"], TINY_TASKS["arith"]]
    for bad in ("sudoku,chess", ",", ""):
        with pytest.raises(TaskError, match="tiny tasks are: countdown, sudoku, arith"):
            get_tiny_tasks(bad)


# ----------------------------------------------------------------------------- the tiny tokenizer's training

def test_train_tiny_tokenizer():
    merges = train_tiny_tokenizer(n_texts=2000)
    assert 50 < len(merges) <= TINY_MERGES and len(set(merges)) == len(merges)
    assert b"<reasoning" in merges and not any(re.search(rb"\d\d|<\|", m) for m in merges)


def test_command_line_without_the_flag_prints_usage():
    run = subprocess.run([sys.executable, "tasks_tiny.py"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "usage: python tasks_tiny.py --train-tokenizer" in run.stderr
