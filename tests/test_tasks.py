"""Tasks, rewards and scorers: hand-written completions, hostile output, loaders, the tiny generators."""
import ast
import random
import re
import time
from fractions import Fraction
from pathlib import Path

import pytest

import scoring
from scoring import (countdown_eval_equation, first_between, gsm8k_eval_answer, last_boxed,
                     math_equiv, math_eval_answer, remove_boxed, safe_eval, soft_format, strict_format,
                     sudoku_cells, sudoku_eval_answer, tag_contents)
from tasks import (EOS, EOT, TASKS, TINY_TASKS, Example, TinyArith, TinyCountdown, TinySudoku,
                   pretrain_corpus, sudoku_grids, sudoku_solutions)

ROOT = Path(__file__).resolve().parent.parent
GSM = {"question": "Ann has 2 pens and buys 3. How many?", "answer": "5"}
GOOD = "<reasoning>\n2+3=5\n</reasoning>\n<answer>\n5\n</answer>\n"


# ----------------------------------------------------------------------------- d1's rewards

def test_gsm8k_rewards_on_hand_written_completions():
    reward = lambda c: TASKS["gsm8k"].rewards(c, GSM)
    full = {"xmlcount": 0.5, "soft_format": 0.5, "strict_format": 0.5, "int": 0.5, "correctness": 2.0}
    assert reward(GOOD) == full
    assert reward(GOOD.rstrip("\n") + EOT + EOS + EOS) == {**full, "strict_format": 0.0}  # no final \n
    multi = "<reasoning>\nfirst 2\nthen +3\n</reasoning>\n<answer>\n5\n</answer>\n"
    assert reward(multi) == full  # DOTALL: multi-line reasoning is well formed
    wrong = reward(GOOD.replace("\n5\n", "\n6\n"))
    assert wrong["correctness"] == 0.0 and wrong["int"] == 0.5
    assert reward("The answer is 5.") == {"xmlcount": 0.0, "soft_format": 0.0, "strict_format": 0.0,
                                          "int": 0.0, "correctness": 0.0}
    trailing = reward(GOOD + "bye!")
    assert trailing["xmlcount"] == pytest.approx(0.5 - 0.004) and trailing["strict_format"] == 0.0
    assert trailing["soft_format"] == 0.5 and trailing["correctness"] == 2.0
    repeated = reward(GOOD + "<answer>\n7\n</answer>\n")  # the last answer counts, tags counted twice
    assert repeated["correctness"] == 0.0 and repeated["xmlcount"] < 0.5
    malformed = reward("<reasoning>\n2+3=5\n<answer>\n5\n")  # closing tags missing
    assert malformed["soft_format"] == 0.0 and malformed["correctness"] == 2.0  # d1 reads after <answer>


def test_math_rewards():
    item = TASKS["math500"].parse({"problem": "Half of 1?", "solution": "So $\\boxed{\\frac12}$."})
    assert item["answer"] == "\\frac12"
    reward = lambda c: TASKS["math500"].rewards(c, item)
    boxed_in_tags = "<reasoning>x</reasoning><answer>\\boxed{0.5}</answer>"
    assert reward(boxed_in_tags) == {"correctness": 2.0, "format": 0.5}
    assert reward("<answer>1/2</answer>") == {"correctness": 0.0, "format": 0.375}  # whole text compared
    assert reward("so \\boxed{\\dfrac{1}{2}}") == {"correctness": 2.0, "format": 0.25}
    assert reward("one half") == {"correctness": 0.0, "format": 0.125}
    with pytest.raises(ValueError, match="no field \"answer\""):
        TASKS["math500"].parse({"problem": "?", "solution": "no box"})


def test_countdown_and_sudoku_rewards():
    cd = {"numbers": [3, 5, 7], "target": 22}
    reward = lambda c: TASKS["countdown"].rewards(c, cd)["countdown"]
    assert reward("<reasoning>\n...\n</reasoning>\n<answer>\n3*5+7\n</answer>") == 1.0
    assert reward("<answer>3*5+8</answer>") == 0.1  # wrong numbers: 0.1 as in d1's code
    assert reward("<answer>3+5+7</answer>") == 0.1  # right numbers, wrong value
    assert reward("<answer>3*5+7</answer> ... <answer>oops</answer>") == 0.1  # the last tags count
    assert reward("3*5+7") == 0.0 and reward("<answer>3*5+7") == 0.0
    sd = TASKS["sudoku"].parse({"Puzzle": "1204340021034021", "Solution": "1234341221434321"})
    reward = lambda c: TASKS["sudoku"].rewards(c, sd)["sudoku"]
    assert reward("<answer>\n1234 3412 2143 4321\n</answer>") == 1.0
    assert reward("<answer>1234341221430000</answer>") == 0.8
    assert reward("<answer>12343412</answer>") == 0.6  # padded with zeros
    assert reward("1234341221434321") == 0.0  # no tags


def test_docstring_examples_of_d1_tasks():
    gsm8k = TASKS["gsm8k"]
    item = gsm8k.parse({"question": "2 pens and 3 more?", "answer": "2+3=5\n#### 5"})
    assert gsm8k.score("...</reasoning>\n<answer>\n\\boxed{5}\n</answer>", item) == (1, 1)
    math = TASKS["math500"]
    item = math.parse({"problem": "Half of 1?", "solution": "\\boxed{\\frac12}", "answer": "\\frac{1}{2}"})
    assert math.score("... so \\boxed{0.5}", item) == (1, 1)
    assert math.rewards("<answer>\\boxed{1/2}</answer>", item) == {"correctness": 2.0, "format": 0.5}
    countdown = TASKS["countdown"]
    item = countdown.parse({"input": "3,5,7", "output": "22"})
    assert item == {"numbers": [3, 5, 7], "target": 22}
    assert countdown.score("...<answer>\n\\boxed{3*5+7}\n</answer>", item) == (1, 1)
    sudoku = TASKS["sudoku"]
    item = sudoku.parse({"Puzzle": "1204340021034021", "Solution": "1234341221434321"})
    assert sudoku.score("<answer>\n1234341221434321\n</answer>", item) == (5, 5)
    for task in TASKS.values():
        assert task.eval_prefix == "<reasoning>"


# ----------------------------------------------------------------------------- d1's evaluation parsing

def test_last_boxed_and_remove_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\boxed{\\frac{1}{2}}"
    assert last_boxed("x \\boxed 5$ y") == "\\boxed 5"
    assert last_boxed("\\fbox{3}") == "\\fbox{3}"
    assert last_boxed("no box here") == "no box here"  # d1's variant: the whole text
    assert last_boxed("\\boxed{1") is None
    assert remove_boxed("\\boxed{12}") == "12" and remove_boxed("\\fbox{3}") == "\\fbox{3}"


def test_eval_parsers():
    assert gsm8k_eval_answer("\\boxed{...} \\boxed{x = 12} \\boxed{7}") == 12.0
    assert gsm8k_eval_answer("\\boxed{1\n2} <answer>\nit is 3 or 4\n</answer>") == 4.0  # one line only
    assert gsm8k_eval_answer("nothing") is None
    assert math_eval_answer("<answer>\\boxed{}</answer>") == "\\boxed{}"  # empty box: the tag content
    assert math_equiv("\\left( 3, \\frac12 \\right)", "(3,\\frac{1}{2})")
    assert math_equiv("x = 5", "5") and math_equiv("10\\%", "10") and not math_equiv("1", "2")
    assert math_equiv("\\frac", "\\frac") and not math_equiv("\\frac", "\\frac ")  # raw fallback
    assert countdown_eval_equation("so \\boxed{3 \\times 5 + 7 = 22}") == "3 * 5 + 7"
    assert countdown_eval_equation("<answer> 8/2 </answer>") == "<answer> 8/2 </answer>"  # no box: all
    assert countdown_eval_equation("\\boxed{8 <answer> 8/2 </answer>") == "8/2"  # box never closes
    assert sudoku_eval_answer("<answer>\n```\n1234 3412\n```</answer>") == "12343412"
    assert sudoku_eval_answer("<answer>\n1234\n3412<|eot_id|>") == "12343412"
    assert sudoku_eval_answer("</answer>\n 9999 <|endoftext|>") == "9999"
    assert sudoku_eval_answer("grid 1234341221434321.") == "1234341221434321"
    assert sudoku_cells("12", "1204340021034021", "1234341221434321") == (0, 5)


ALPHABET = ["<answer>", "</answer>", "```", " ", "\n", "1", "23", "<|eot_id|>", "<|endoftext|>",
            "<reasoning>", "</reasoning>", "\\boxed{", "}", "=", "+", "x", "0123456789012345", "\t"]

def _group(pattern, flags=re.DOTALL):
    return lambda text: (m := re.search(pattern, text, flags)) and m.group(1)


def _matches(pattern):
    return lambda text: bool(re.match(pattern, text, re.DOTALL))


REGEX_TWINS = [  # (our linear scan, d1's regex)
    (lambda t: list(tag_contents(t, "<answer>", "</answer>")),
     lambda t: re.findall(r"<answer>(.*?)</answer>", t, re.DOTALL)),
    (lambda t: list(tag_contents(t, "\\boxed{", "}", dotall=False)),
     lambda t: re.findall(r"\\boxed{(.*?)}", t)),
    (lambda t: first_between(t, "<answer>", (EOT, EOS, "</answer>")),
     _group(r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)")),
    (scoring._fenced_digits, _group(r"<answer>.*?```\s*([\d\s]+)```")),
    (scoring._after_answer, _group(r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)")),
    (scoring._digits_before_answer_end, _group(r".*?(\d{16})\s*</answer>")),
    (scoring._equation_lhs, _group(r"([0-9+\-*/() ]+)=[0-9. ]+", flags=0)),
    (soft_format, _matches(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")),
    (strict_format, _matches(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")),
]


LAYOUTS = ["<reasoning>\n{}\n</reasoning>\n<answer>\n{}\n</answer>\n{}",
           "<reasoning>{}</reasoning>{}<answer>{}</answer>", "<answer>{}```{}```{}",
           "{}</answer>{}<|eot_id|>{}", "{}{}=2{}"]


def _fuzz_text(rng):
    """Random strings of the pieces d1's regexes care about, half of them in well-formed layouts."""
    soup = lambda: "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))
    if rng.random() < 0.5:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 14)))
    text = rng.choice(LAYOUTS).format(soup(), soup(), soup())
    i, j = sorted(rng.sample(range(len(text) + 1), 2))
    return text if rng.random() < 0.5 else text[:i] + rng.choice(["", text[i:j] * 2]) + text[j:]


@pytest.mark.parametrize("ours, regex", REGEX_TWINS)
def test_linear_scans_agree_with_d1_regexes(ours, regex):
    rng, found = random.Random(0), 0
    for _ in range(5000):
        text = _fuzz_text(rng)
        want = regex(text)
        assert ours(text) == want, repr(text)
        found += bool(want) or want == ""
    assert found > 40  # the layouts make matches common enough to test every branch


# ----------------------------------------------------------------------------- safe arithmetic

def _random_expression(rng, depth=0):
    """(text, exact value) of a random expression; the slow, obvious reference is Fraction."""
    if depth > 2 or rng.random() < 0.3:  # at most 8 numbers up to 30: within safe_eval's bound
        n = rng.randint(0, 30)
        return str(n), Fraction(n)
    (a, x), (b, y) = _random_expression(rng, depth + 1), _random_expression(rng, depth + 1)
    op = rng.choice("+-*/")
    if op == "/" and y == 0:
        op = "+"
    value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]
    return f"({a}{rng.choice(['', ' '])}{op}{b})", value


def test_safe_eval_matches_exact_arithmetic():
    rng = random.Random(0)
    for _ in range(500):
        text, value = _random_expression(rng)
        assert safe_eval(text) == pytest.approx(float(value), rel=1e-9, abs=1e-9), text
    assert safe_eval("-(3) - -4 * +2") == 5 and safe_eval("7/2") == 3.5 and safe_eval(" 00 + 1.5") == 1.5


@pytest.mark.parametrize("bad", ["2**3", "2//3", "1/0", "1/(2-2)", "()", "3 4", "2(3)", "07+1", "1.2.3",
                                 "__import__('os')", "\u0663+\u0664", "(" * 30 + "1" + ")" * 30,
                                 "-" * 50 + "1", "1+" * 150 + "1", "9" * 20, "", "3=3", "1e5"])
def test_safe_eval_refuses(bad):
    assert safe_eval(bad) is None


# ----------------------------------------------------------------------------- hostile output

HOSTILE = {
    "power tower": "<answer>49**55**53</answer> \\boxed{49**55**53}",
    "deep nesting": "<answer>" + "(" * 10000 + "1" + ")" * 10000 + "</answer>",
    "1 MB random": "".join(random.Random(0).choices(ALPHABET + ["(", "9", "*"], k=150_000))[:1 << 20],
    "1 MB of tags": "<answer>" * 131072,
    "1 MB of boxes": "\\boxed{" * 149796 + "\n}",
    "1 MB digits then blanks": "1" * 500_000 + " " * 500_000 + "</answer>x" + "<answer>```" + " " * 40_000,
    "1 MB expression": "<answer>" + "1+" * 500_000 + "1</answer>",
    "non-ASCII digits": "<answer>\u0663+\u0664</answer> \\boxed{\u0663\u0664} <answer>\u0663\u0664</answer>",
    "code": "<answer>__import__('os').system('touch PWNED')</answer>\\boxed{__import__('os')}",
}
SUDOKU_ITEM = {"puzzle": "1204340021034021", "solution": "1234341221434321"}
REAL_ITEMS = {"gsm8k": GSM, "math500": {"question": "?", "answer": "7"},
              "countdown": {"numbers": [49, 55, 53], "target": 51}, "sudoku": SUDOKU_ITEM}


def _all_checks():
    for name, task in TASKS.items():
        yield f"{name}.rewards", lambda t, task=task, item=REAL_ITEMS[name]: task.rewards(t, item)
        yield f"{name}.score", lambda t, task=task, item=REAL_ITEMS[name]: task.score(t, item)
    for name, task in TINY_TASKS.items():
        ex = task.examples("test", 1)[0]
        yield f"tiny {name}.reward", lambda t, task=task, ex=ex: task.reward(t, ex)
        yield f"tiny {name}.format_ok", task.format_ok


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_output_is_scored_fast_and_never_run(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for label, check in _all_checks():
        start = time.perf_counter()
        check(HOSTILE[kind])
        assert time.perf_counter() - start < 1.0, f"{label} on {kind}"
    assert not (tmp_path / "PWNED").exists()


def test_no_eval_or_exec_in_the_code():
    for file in ("scoring.py", "tasks.py", "eval.py"):
        for node in ast.walk(ast.parse((ROOT / file).read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile", "__import__"), file


# ----------------------------------------------------------------------------- loaders

@pytest.mark.parametrize("name, text, complaint", [
    ("gsm8k", '{"question": "q", "answer": "#### 1"}\n\n{"question": "q", "answer": "1"}\n', "line 3.*####"),
    ("gsm8k", '{"question": "q", "answer": "#### 1"}\n{"question": "q",\n', "line 2.*not valid JSON"),
    ("math500", '{"solution": "\\\\boxed{1}"}\n', "line 1.*missing field 'problem'"),
    ("countdown", '{"input": "1,2,3", "output": "6"}\n{"input": "1,x,3", "output": "6"}\n',
     "line 2.*integers"),
    ("countdown", '{"nums": [1, 2, 3], "target": 6}\n{"nums": "1 2 3", "target": 6}\n', "line 2.*'nums'"),
    ("sudoku", "Puzzle,Solution\n1204340021034021,1234341221434321\n1204340021034021,1111341221434321\n",
     "line 3.*contradicts"),
])
def test_loaders_name_file_and_line(tmp_path, name, text, complaint):
    path = tmp_path / ("data.csv" if name == "sudoku" else "data.jsonl")
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}, {complaint}"):
        TASKS[name].load(path)


def test_loaders_read_the_published_files(shared):
    data = shared / "data"
    gsm = TASKS["gsm8k"].load(data / "gsm8k/test.jsonl")
    assert len(gsm) == 1319 and gsm[0]["answer"] == "18"
    cd = TASKS["countdown"].load(data / "d1/countdown_cd3_test.jsonl")
    assert len(cd) == 256 and cd[0] == {"numbers": [30, 100, 93], "target": 23}
    sd = TASKS["sudoku"].load(data / "d1/4x4_test_sudoku.csv")
    assert len(sd) == 500 and all(item["puzzle"].count("0") == 8 for item in sd)
    assert all(item["solution"] in sudoku_solutions(item["puzzle"]) for item in sd[:50])
    prompt = TASKS["countdown"].eval_prompt(cd[0])
    assert prompt.endswith("</answer>\n\nNumbers: [30, 100, 93]\nTarget: 23")
    sudoku_prompt = TASKS["sudoku"].rl_prompt(sd[0])
    assert sudoku_prompt.endswith(f"\n\nSolve the following Sudoku puzzle: {sd[0]['puzzle']}\n")


# ----------------------------------------------------------------------------- tiny tasks

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
    for ex in TinySudoku(blanks=(4, 8)).examples("test", 200):
        assert sudoku_solutions(ex.puzzle) == [ex.answer] and 4 <= ex.puzzle.count("0") <= 8
    for ex in TinyArith().examples("test", 200):
        value = ex.numbers[0]
        for op, b in ex.steps:
            value = {"+": value + b, "-": value - b, "*": value * b, "/": value / b}[op]
        assert value == ex.answer and value >= 0


@pytest.mark.parametrize("name, longest", [("arith", 100), ("countdown", 100), ("sudoku", 125)])
def test_sft_and_direct_answers_pass_their_own_checks(name, longest):
    task, rng = TINY_TASKS[name], random.Random(0)
    responses = []
    for ex in task.examples("train", 300):
        for response in (task.sft_response(ex, rng), task.direct_response(ex)):
            assert task.format_ok(response + EOT + EOS) and task.correct(response, ex) == 1.0, response
            responses.append(response)
        assert len(ex.prompt) <= 55
    assert max(map(len, responses)) <= longest
    backtracked = sum(" no" in r for r in responses) / (len(responses) / 2)
    assert 0.2 < backtracked < 0.4  # the default share of self-correcting traces is 0.3


def test_tiny_rewards_on_hand_written_completions():
    arith = TinyArith()
    ex = Example("Ann has 3 pens, buys 4, loses 2. How many?", 5, "3+4-2", numbers=(3,),
                 steps=(("+", 4), ("-", 2)))
    good = "<reasoning>3+4=7\n7-2=5</reasoning>\n<answer>5</answer>"
    assert arith.reward(good, ex) == {"correct": 2.0, "format": 0.5}
    after_eot = good + EOT + "<answer>6</answer>"  # what follows the end of the turn is ignored
    assert arith.reward(after_eot, ex) == {"correct": 2.0, "format": 0.5}
    assert arith.reward(good.replace(">5<", ">6<"), ex) == {"correct": 0.0, "format": 0.5}
    assert arith.reward(good + " extra", ex) == {"correct": 2.0, "format": 0.0}
    assert arith.reward(good + "\n<answer>6</answer>", ex) == {"correct": 0.0, "format": 0.0}  # repeated
    assert arith.reward("<answer>5</answer>", ex) == {"correct": 2.0, "format": 0.0}  # no reasoning
    assert arith.reward("<reasoning>5</reasoning>\n<answer> 5.0 </answer>", ex)["correct"] == 0.0
    assert arith.reward("5", ex) == {"correct": 0.0, "format": 0.0}
    assert arith.format_ok("<reasoning>a\nb\n</reasoning>\n<answer>5</answer>\n")  # multi-line, blank after
    assert not arith.format_ok("<reasoning>a</reasoning><answer>5</answer>")  # the newline is required

    countdown = TinyCountdown()
    ex = Example("Numbers: [3, 5, 7]\nTarget: 22", 22, "[3, 5, 7]->22", numbers=(3, 5, 7))
    right = "<reasoning></reasoning>\n<answer>7+3*5</answer>"
    assert countdown.reward(right, ex) == {"correct": 1.0, "format": 0.0}
    assert countdown.reward("<answer>(7+3)*5</answer>", ex) == {"correct": 0.0, "format": 0.1}
    assert countdown.reward("<answer>7+3*5=22</answer>", ex) == {"correct": 0.0, "format": 0.1}
    assert countdown.reward("7+3*5", ex) == {"correct": 0.0, "format": 0.0}

    sudoku = TinySudoku()
    puzzle = "1204340021034021"
    ex = Example(f"Sudoku: {puzzle}", "1234341221434321", puzzle, puzzle=puzzle)
    assert sudoku.reward("<answer>1234341221434321</answer>", ex) == {"correct": 1.0}
    assert sudoku.reward("<answer>1234 3412 2100 4321</answer>", ex) == {"correct": 0.8}
    assert sudoku.reward("<answer></answer>", ex) == {"correct": 0.0}


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
