r"""
d1's four benchmarks (GSM8K, MATH500, Countdown, Sudoku): prompts, loaders, RL rewards and evaluation
checks, as in d1's released code (github.com/dllm-reasoning/d1). The paper: Zhao, Gupta, Zheng,
Grover 2025, "d1: Scaling Reasoning in Diffusion Large Language Models via Reinforcement Learning",
arXiv 2504.12216 (Sec. 4 and Table 1: the evaluation).

    from tasks_d1 import D1_TASKS, d1_task
    gsm8k = D1_TASKS["gsm8k"]                       # also "math500", "countdown", "sudoku"
    gsm8k = d1_task("gsm8k")                        # the same; d1_task("math") is "math500"
    items = gsm8k.load("../shared/data/gsm8k/test.jsonl")   # local files in their published formats:
    items = gsm8k.load("gsm8k_train.parquet")       #   .jsonl, .json, .csv, .parquet (needs pyarrow)
    gsm8k.eval_prompt(items[0])                     # user message; the assistant turn starts with
    gsm8k.eval_prefix                               #   "<reasoning>" (d1's evaluation prefills it)
    gsm8k.correct_counts(completion, items[0])      # (correct, total) with d1's evaluation parsing
    gsm8k.correct(completion, items[0])             # the same as a share, 0.0 .. 1.0
    gsm8k.rewards(completion, items[0])             # {reward function: value}: diffu-GRPO's (Sec. 3.2)

A bad data file raises data_d1.DataError (a ValueError) naming file, line and field. Every task implements
tasks.Task. The parsing itself (boxes, answer tags, MATH normalisation, the safe Countdown evaluator)
lives in scoring.py. A completion is the assistant's text from "<reasoning>" (prepend eval_prefix if
it was prefilled); the rewards read it up to the end of the turn, while the evaluation checks see the
raw text, as d1's do.

Deviations of the RL rewards from d1's released code (each is also noted where it is written):
1. The completion is cut at the end of the turn (tokenizer.end_of_turn); d1 decodes with
   skip_special_tokens, which gives the same text for every completion that ends in EOS padding.
2. GSM8K's XML count charges trailing text once (count_xml); the format regexes use DOTALL (the
   released code first lacked it, so they rarely fired on multi-line reasoning).
3. MATH's format reward is the intended 1.0 / 0.75 / 0.5 / 0.25 (times 0.5); the released code's "\b"
   escape bug leaves only 0.75 or 0.25.
4. Countdown is computed by scoring.safe_eval, never eval(). Its 0.1 for a wrong answer in tags is
   given even for wrong numbers, as in the code that was run (the paper says right numbers only).
"""
import re

from data_d1 import DataError, as_integers, get_field, parse_all

from scoring import (countdown_correct, countdown_eval_equation, first_answer, gsm8k_eval_answer,
                     last_boxed, math_eval_answer, math_equiv, remove_boxed, sudoku_cells,
                     sudoku_eval_answer, sudoku_share)
from tasks import Task, TaskError
from tokenizer import end_of_turn

# ----------------------------------------------------------------------------- d1's prompts
# Verbatim from d1's released code (its stray characters included): the model was trained and scored
# on these.

SYSTEM_PROMPT = ("\nRespond in the following format:\n"
                 "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n")
SUDOKU_SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""
MATH_EXPERT = ("You are a math expert. You will be given a question to solve. Solve it step by step. "
               "Wrap the final answer in a \\boxed{}.")
BOXED_FORMAT = ("Respond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n"
                "<answer>\n\\boxed{...}\n</answer>")
GSM8K_EVAL_PROMPT = MATH_EXPERT + " \n" + BOXED_FORMAT
MATH_EVAL_PROMPT = MATH_EXPERT + "\n" + BOXED_FORMAT + '" \n'
COUNTDOWN_EVAL_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the "
    "provided target number. You may use the operations +, -, *, and / as needed, but each number must "
    "be used exactly once. Think step-by-step. After reasoning, provide only your final expression "
    "inside \\boxed{} tags without including an equals sign or the target number. For example: "
    "\\boxed{a + b * c}" + BOXED_FORMAT)
COUNTDOWN_RL_QUESTION = (
    "Using only the numbers {numbers}, create an arithmetic expression that evaluates to exactly "
    "{target}. You must use all numbers from the list, and each number must be used exactly once. You "
    "may use the operations +, -, *, and / as needed. After reasoning, provide only your final "
    "expression inside <answer></answer> tags without including an equals sign or the target number. "
    "For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: "
    "<answer>\n2*4-3\n</answer>")


# ----------------------------------------------------------------------------- d1's four tasks

class D1Task(Task):
    """What the four d1 tasks share: loading, the eval prefix, and the evaluation check.

    correct_counts(text, item) is d1's pooled metric, (correct, total): 1 item, or Sudoku's empty
    cells; correct(text, item) is the same as a share, as the Task interface asks.
    """
    eval_prefix = "<reasoning>"  # d1's evaluation prefills the assistant turn with it

    def load(self, path) -> list[dict]:
        """Items from a local .jsonl, .json, .csv or .parquet file; a malformed record, or another
        task's data, raises DataError naming file, line (or row) and field."""
        return parse_all(path, self.parse, self.name)

    def parse(self, record: dict) -> dict:
        raise NotImplementedError

    def from_generation(self, record: dict) -> dict:
        """The item behind a record of d1's published generation files (question, ground_truth)."""
        raise NotImplementedError

    def ground_truth(self, item: dict):
        """The inverse of from_generation: the "ground_truth" that d1's generation files hold."""
        raise NotImplementedError

    def question(self, item: dict) -> str:
        """The question as d1's generation files record it: the eval prompt's last part."""
        return item["question"]

    def generation_record(self, item: dict, answer: str) -> dict:
        """One record of d1's generation files: the question, the answer written after the
        prefilled "<reasoning>", and the ground truth (eval.py --rescore reads these back)."""
        return {"question": self.question(item), "generations": answer, "ground_truth": self.ground_truth(item)}

    def correct_counts(self, text: str, item: dict) -> tuple[int, int]:
        raise NotImplementedError

    def correct(self, text: str, item: dict) -> float:
        """The share correct_counts gives: 0.0 .. 1.0 (0.0 when there is nothing to count)."""
        right, total = self.correct_counts(text, item)
        return right / total if total else 0.0


# ----------------------------------------------------------------------------- GSM8K's format rewards
# d1's GSM8K reward functions, in linear time (tests/test_scoring.py checks them against d1's regexes).

_SPACE = re.compile(r"\s*")  # Python's \s: the same blanks as d1's regexes


def xml_answer(text: str) -> str:
    """d1's extract_xml_answer: after the last "<answer>", before the next "</answer>", stripped."""
    return text.rpartition("<answer>")[2].partition("</answer>")[0].strip()


def soft_format(text: str) -> bool:
    r"""re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text, re.DOTALL), linear."""
    if not text.startswith("<reasoning>"):
        return False
    pos = len("<reasoning>")
    while (q := text.find("</reasoning>", pos)) >= 0:
        a = _SPACE.match(text, q + len("</reasoning>")).end()
        if text.startswith("<answer>", a):  # the earliest such pair leaves the most room after it
            return text.find("</answer>", a + len("<answer>")) >= 0
        pos = q + 1
    return False


def strict_format(text: str) -> bool:
    r"""re.match(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", text, DOTALL)."""
    head, middle, tail = "<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>\n"
    m = text.find(middle, len(head)) if text.startswith(head) else -1
    if m < 0:
        return False
    ends = [len(text) - len(tail)]  # "$": the very end, or before one final newline
    if text.endswith("\n"):
        ends.append(len(text) - 1 - len(tail))
    return any(e >= m + len(middle) and text.startswith(tail, e) for e in ends)


def count_xml(text: str) -> float:
    r"""d1's XML tag count: 0.125 per tag found exactly once, minus 0.001 per trailing character.

    The tags include their newlines, as in d1's system prompt. The trailing characters are those
    after "\n</answer>" and one newline. (d1's released code charges them twice, and charges the
    whole completion when "</answer>" is not followed by a newline, as in a completion cut at EOS.)
    """
    tags = ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>")
    score = 0.125 * sum(text.count(tag) == 1 for tag in tags)
    if text.count("\n</answer>") == 1:
        trailing = text.rpartition("\n</answer>")[2]
        score -= 0.001 * len(trailing.removeprefix("\n"))
    return score


class GSM8K(D1Task):
    r"""Grade-school math word problems; gold = the number after "####".

        task = D1_TASKS["gsm8k"]
        item = task.parse({"question": "2 pens and 3 more?", "answer": "2+3=5\n#### 5"})
        task.correct_counts("...</reasoning>\n<answer>\n\\boxed{5}\n</answer>", item)   # (1, 1)
        task.rewards("<reasoning>\n2+3=5\n</reasoning>\n<answer>\n5\n</answer>\n", item)
        # {'xmlcount': 0.5, 'soft_format': 0.5, 'strict_format': 0.5, 'int': 0.5, 'correctness': 2.0}
    """
    name = "gsm8k"

    def parse(self, record):
        question, solution = get_field(record, "question", str), get_field(record, "answer", str)
        if "####" not in solution:
            raise DataError('field "answer" has no "#### N" final answer')
        return {"question": question, "solution": solution, "answer": solution.split("####")[1].strip()}

    def from_generation(self, record):
        # the published ground truths are floats, and one is None (that item counts as wrong)
        return {"question": record["question"], "answer": record["ground_truth"]}

    def ground_truth(self, item):
        answer = item["answer"]  # a float already when the item came from a generation file
        return float(answer.replace(",", "")) if isinstance(answer, str) else answer  # "1,450,000"

    def rl_prompt(self, item):
        return SYSTEM_PROMPT + "\n\n" + item["question"]

    def eval_prompt(self, item):
        return GSM8K_EVAL_PROMPT + "\n\n" + item["question"]

    def rewards(self, completion, item):
        """d1's five GSM8K reward functions (d1's released code, diffu-grpo/reward_func.py); at most 4.0."""
        text = end_of_turn(completion)
        answer = xml_answer(text)
        return {"xmlcount": count_xml(text),                       # the four tags, each once: 0.5
                "soft_format": 0.5 * soft_format(text),             # tags in order, blanks between
                "strict_format": 0.5 * strict_format(text),         # exactly d1's line layout
                "int": 0.5 * answer.isdigit(),                      # the answer is an integer
                "correctness": 2.0 * (answer == item["answer"])}   # string equality, as in d1

    def correct_counts(self, text, item):
        value = gsm8k_eval_answer(text)
        return int(value is not None and value == self.ground_truth(item)), 1


class MATH500(D1Task):
    r"""Competition math (train: MATH minus MATH-500; test: MATH-500); gold = the final answer.

        task = D1_TASKS["math500"]
        item = task.parse({"problem": "Half of 1?", "answer": r"\frac{1}{2}"})
        task.correct_counts(r"... so \boxed{0.5}", item)                            # (1, 1)
        task.rewards(r"<answer>\boxed{1/2}</answer>", item)  # {'correctness': 2.0, 'format': 0.5}
    """
    name = "math500"

    def parse(self, record):
        problem = get_field(record, "problem", str)
        solution, answer = record.get("solution", ""), record.get("answer")
        if not isinstance(solution, str):
            raise DataError(f"field 'solution' should be a str, got {solution!r:.60}")
        if answer is None:  # MATH's training files carry the answer only inside the solution
            boxed = last_boxed(solution) if "\\boxed" in solution else None
            if boxed is None:
                raise DataError('no field "answer" and no \\boxed{} answer in "solution"')
            answer = remove_boxed(boxed)
        return {"question": problem, "solution": solution, "answer": str(answer)}

    def from_generation(self, record):
        return {"question": record["question"], "answer": record["ground_truth"]}

    def ground_truth(self, item):
        return item["answer"]

    def rl_prompt(self, item):
        return SYSTEM_PROMPT + "\n\n" + MATH_EXPERT + " \n\n" + item["question"]

    def eval_prompt(self, item):
        return MATH_EVAL_PROMPT + "\n\n" + item["question"]

    def rewards(self, completion, item):
        r"""d1's two MATH rewards: correctness 2.0 and the boxed-in-answer format reward (max 0.5).

        Correctness compares the last \boxed{} (the whole text if there is none, as in d1) with the
        gold under the MATH normalisation. Format: 1.0 for <answer> tags with \boxed inside, 0.75 for
        tags without it, 0.5 for \boxed without tags, 0.25 for neither, times 0.5 (the intended
        values; the released code's "\b" escape bug leaves only 0.75 or 0.25).
        """
        text = end_of_turn(completion)
        boxed = last_boxed(text)
        predicted = text if boxed is None else remove_boxed(boxed)
        tag = first_answer(text)
        if tag is not None:
            form = 1.0 if "\\boxed" in tag else 0.75
        else:
            form = 0.5 if "\\boxed" in text else 0.25
        return {"correctness": 2.0 * math_equiv(predicted, item["answer"]), "format": 0.5 * form}

    def correct_counts(self, text, item):
        answer = math_eval_answer(text)
        return int(answer is not None and math_equiv(answer, item["answer"])), 1


class Countdown(D1Task):
    r"""Countdown with 3 numbers: reach the target with + - * / and each number exactly once.

        task = D1_TASKS["countdown"]
        item = task.parse({"input": "3,5,7", "output": "22"})   # {"numbers": [3, 5, 7], "target": 22}
        task.correct_counts("...<answer>\n\\boxed{3*5+7}\n</answer>", item)              # (1, 1)
        task.rewards("<answer>3*5+7</answer>", item)       # {'countdown': 1.0}; wrong: 0.1; no tag: 0
    """
    name = "countdown"

    def parse(self, record):
        if isinstance(record, dict) and "input" in record:  # d1's test file: {"input": "a,b,c", ...}
            numbers = as_integers(get_field(record, "input", str).split(","), '"input"')
            target = as_integers([get_field(record, "output", (str, int))], '"output"')[0]
        else:  # TinyZero's training format: {"nums": [...], "target": t}
            numbers = as_integers(get_field(record, "nums", list), '"nums"')
            target = as_integers([get_field(record, "target", (str, int))], '"target"')[0]
        return {"numbers": numbers, "target": target}

    def load(self, path):
        """The file's 3-number puzzles: d1 trains on TinyZero's Countdown-Tasks-3to4 filtered to
        len(nums) == 3 (its test file has only those); other rows are skipped silently."""
        items = super().load(path)
        kept = [item for item in items if len(item["numbers"]) == 3]
        if not kept:
            sizes = sorted({len(item["numbers"]) for item in items})
            raise DataError(f"{path}: no Countdown puzzle with 3 numbers (d1 uses only those; "
                            f"this file's puzzles have {' or '.join(map(str, sizes))} numbers)")
        return kept

    def from_generation(self, record):
        numbers, target = record["ground_truth"]
        return {"numbers": list(numbers), "target": target}

    def ground_truth(self, item):
        return [list(item["numbers"]), item["target"]]

    def rl_prompt(self, item):
        return SYSTEM_PROMPT + "\n" + COUNTDOWN_RL_QUESTION.format(**item)

    def question(self, item):
        return f"Numbers: {item['numbers']}\nTarget: {item['target']}"

    def eval_prompt(self, item):
        return COUNTDOWN_EVAL_PROMPT + "\n\n" + self.question(item)

    def rewards(self, completion, item):
        """d1's Countdown reward (TinyZero's): the expression in the LAST answer tags; 1.0 if it
        uses exactly the given numbers and hits the target, 0.1 for any other tagged answer, else 0."""
        answer = self.answer_of(completion)
        if answer is None:
            return {"countdown": 0.0}
        correct = countdown_correct(answer, item["numbers"], item["target"])
        return {"countdown": 1.0 if correct else 0.1}

    def correct_counts(self, text, item):
        return int(countdown_correct(countdown_eval_equation(text), item["numbers"], item["target"])), 1


class Sudoku(D1Task):
    r"""4x4 Sudoku: 16 digits read row by row, "0" = empty. Scored on the empty cells only.

        task = D1_TASKS["sudoku"]
        item = task.parse({"Puzzle": "1204340021034021", "Solution": "1234341221434321"})
        task.correct_counts("<answer>\n1234341221434321\n</answer>", item)  # (5, 5): empty cells
        task.rewards("<answer>1234341221430000</answer>", item)     # {'sudoku': 0.8}: 4 of 5 cells
    """
    name = "sudoku"

    def parse(self, record):
        puzzle, solution = get_field(record, "Puzzle", str), get_field(record, "Solution", str)
        if not (re.fullmatch(r"[0-4]{16}", puzzle) and re.fullmatch(r"[1-4]{16}", solution)):
            raise DataError(f"want 16 digits 0-4 and 16 digits 1-4, got {puzzle!r}, {solution!r}")
        if any(p not in ("0", s) for p, s in zip(puzzle, solution)):
            raise DataError(f"solution {solution} contradicts puzzle {puzzle}")
        return {"puzzle": puzzle, "solution": solution}

    def from_generation(self, record):
        found = re.search(r"Sudoku puzzle: ([0-9]{16})", record["question"])
        if not found:
            raise DataError(f"no 'Sudoku puzzle: <16 digits>' in question {record['question']!r:.80}")
        return {"puzzle": found.group(1), "solution": str(record["ground_truth"])}

    def ground_truth(self, item):
        return item["solution"]

    def question(self, item):
        return f"Solve the following Sudoku puzzle: {item['puzzle']}\n"

    def rl_prompt(self, item):
        return SUDOKU_SYSTEM_PROMPT + "\n\n" + self.question(item)

    eval_prompt = rl_prompt  # d1 uses the same prompt for both

    def rewards(self, completion, item):
        """d1's Sudoku reward: the digits in the LAST answer tags, padded or cut to 16; the share of
        the empty cells they fill correctly."""
        return {"sudoku": sudoku_share(self.answer_of(completion), item["puzzle"], item["solution"])}

    def correct_counts(self, text, item):
        return sudoku_cells(sudoku_eval_answer(text), item["puzzle"], item["solution"])


D1_TASKS = {task.name: task for task in (GSM8K(), MATH500(), Countdown(), Sudoku())}
_ALIASES = {"math": "math500"}  # what the training command line types: --task=gsm8k|math|countdown|sudoku
D1_TASK_NAMES = (*D1_TASKS, *_ALIASES)  # what --task accepts


def d1_task(name: str) -> D1Task:
    """The d1 task called name: a key of D1_TASKS, or "math" (= "math500")."""
    task = D1_TASKS.get(_ALIASES.get(name, name))
    if task is None:
        raise TaskError(f"unknown d1 task {name!r}; valid: {', '.join(D1_TASKS)} (or math = math500)")
    return task
