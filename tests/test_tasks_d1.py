"""tasks_d1.py: d1's four benchmarks. Rewards on hand-written completions, the evaluation checks,
the docstring examples, and the loaders (on hand-made files, and on the published ones in ../shared)."""
import re
import time

import pytest

from tasks_d1 import D1_TASKS
from tasks_tiny import sudoku_solutions
from tokenizer import EOS, EOT

GSM = {"question": "Ann has 2 pens and buys 3. How many?", "answer": "5"}
GOOD = "<reasoning>\n2+3=5\n</reasoning>\n<answer>\n5\n</answer>\n"


# ----------------------------------------------------------------------------- d1's rewards

def test_gsm8k_rewards_on_hand_written_completions():
    reward = lambda c: D1_TASKS["gsm8k"].rewards(c, GSM)
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
    item = D1_TASKS["math500"].parse({"problem": "Half of 1?", "solution": r"So $\boxed{\frac12}$."})
    assert item["answer"] == r"\frac12"
    reward = lambda c: D1_TASKS["math500"].rewards(c, item)
    assert reward(r"<reasoning>x</reasoning><answer>\boxed{0.5}</answer>") == {"correctness": 2.0,
                                                                                "format": 0.5}
    assert reward("<answer>1/2</answer>") == {"correctness": 0.0, "format": 0.375}  # whole text compared
    assert reward(r"so \boxed{\dfrac{1}{2}}") == {"correctness": 2.0, "format": 0.25}
    assert reward("one half") == {"correctness": 0.0, "format": 0.125}
    with pytest.raises(ValueError, match="no field \"answer\""):
        D1_TASKS["math500"].parse({"problem": "?", "solution": "no box"})


def test_countdown_and_sudoku_rewards():
    cd = {"numbers": [3, 5, 7], "target": 22}
    reward = lambda c: D1_TASKS["countdown"].rewards(c, cd)["countdown"]
    assert reward("<reasoning>\n...\n</reasoning>\n<answer>\n3*5+7\n</answer>") == 1.0
    assert reward("<answer>3*5+8</answer>") == 0.1  # wrong numbers: 0.1 as in d1's code
    assert reward("<answer>3+5+7</answer>") == 0.1  # right numbers, wrong value
    assert reward("<answer>3*5+7</answer> ... <answer>oops</answer>") == 0.1  # the last tags count
    assert reward("3*5+7") == 0.0 and reward("<answer>3*5+7") == 0.0
    sd = D1_TASKS["sudoku"].parse({"Puzzle": "1204340021034021", "Solution": "1234341221434321"})
    reward = lambda c: D1_TASKS["sudoku"].rewards(c, sd)["sudoku"]
    assert reward("<answer>\n1234 3412 2143 4321\n</answer>") == 1.0
    assert reward("<answer>1234341221430000</answer>") == 0.8
    assert reward("<answer>12343412</answer>") == 0.6  # padded with zeros
    assert reward("1234341221434321") == 0.0  # no tags


def gsm8k_rewards(xml, soft, strict, integer, correct):
    return {"xmlcount": xml, "soft_format": soft, "strict_format": strict, "int": integer,
            "correctness": correct}


@pytest.mark.parametrize("answer, gold, expected", [
    # "int" is str.isdigit() of the stripped answer; correctness is string equality, as in d1
    ("5", "5", gsm8k_rewards(0.5, 0.5, 0.5, 0.5, 2.0)),
    (" 5 ", "5", gsm8k_rewards(0.5, 0.5, 0.5, 0.5, 2.0)),   # stripped before both checks
    ("5.0", "5", gsm8k_rewards(0.5, 0.5, 0.5, 0.0, 0.0)),   # the same number, another string
    ("-5", "5", gsm8k_rewards(0.5, 0.5, 0.5, 0.0, 0.0)),    # "-" is not a digit
    ("-5", "-5", gsm8k_rewards(0.5, 0.5, 0.5, 0.0, 2.0)),
    ("1,000", "1,000", gsm8k_rewards(0.5, 0.5, 0.5, 0.0, 2.0)),
    ("1000", "1,000", gsm8k_rewards(0.5, 0.5, 0.5, 0.5, 0.0)),
])
def test_gsm8k_integer_and_exact_answer_rewards(answer, gold, expected):
    text = f"<reasoning>\n2+3\n</reasoning>\n<answer>\n{answer}\n</answer>\n"
    assert D1_TASKS["gsm8k"].rewards(text, {"question": "?", "answer": gold}) == expected


@pytest.mark.parametrize("text, expected", [
    # no opening <reasoning>: 3 tags (0.375); both format regexes are anchored at the start
    ("2+3=5\n</reasoning>\n<answer>\n5\n</answer>\n", gsm8k_rewards(0.375, 0.0, 0.0, 0.5, 2.0)),
    # two reasoning blocks: those two tags count 0, the answer tags 0.25; .*? spans both blocks
    ("<reasoning>\na\n</reasoning>\n<reasoning>\nb\n</reasoning>\n<answer>\n5\n</answer>\n",
     gsm8k_rewards(0.25, 0.5, 0.5, 0.5, 2.0)),
    # no closing </answer> (cut at EOS): 3 tags, no trailing charge; the answer is read after <answer>
    ("<reasoning>\nx\n</reasoning>\n<answer>\n5" + EOT + EOS, gsm8k_rewards(0.375, 0.0, 0.0, 0.5, 2.0)),
    # tags without their newlines: the XML count sees none, the soft format (\s*) still matches
    ("<reasoning>2+3</reasoning><answer>5</answer>", gsm8k_rewards(0.0, 0.5, 0.0, 0.5, 2.0)),
    # text before <reasoning>: the tags all count, the formats (re.match) do not
    ("Sure!\n<reasoning>\nx\n</reasoning>\n<answer>\n5\n</answer>\n", gsm8k_rewards(0.5, 0.0, 0.0, 0.5, 2.0)),
    # 10 characters after "</answer>\n": 0.5 - 0.010
    ("<reasoning>\nx\n</reasoning>\n<answer>\n5\n</answer>\n0123456789",
     gsm8k_rewards(0.49, 0.5, 0.0, 0.5, 2.0)),
])
def test_gsm8k_format_rewards_on_tag_edge_cases(text, expected):
    got = D1_TASKS["gsm8k"].rewards(text, GSM)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text, expected", [
    # format: 1.0 tags with \boxed in the FIRST answer tag, 0.75 tags only, 0.5 \boxed only, 0.25 neither
    (r"\boxed{1/2} <answer>1/2</answer>", {"correctness": 2.0, "format": 0.375}),   # box outside
    (r"\boxed{3}, then <answer>\boxed{1/2}</answer>", {"correctness": 2.0, "format": 0.5}),  # both
    (r"<answer>\boxed{2}</answer> <answer>1/2</answer>", {"correctness": 0.0, "format": 0.5}),
    (r"<answer>\boxed 1/2$</answer>", {"correctness": 2.0, "format": 0.5}),  # "\boxed " up to "$"
    ("<answer>\\boxed{1/2}" + EOT + "</answer>", {"correctness": 2.0, "format": 0.25}),  # cut: no tags
    ("<answer>0.5</answer>", {"correctness": 0.0, "format": 0.375}),  # no box: the whole text compared
    ("0.5", {"correctness": 2.0, "format": 0.125}),                   # ... which here is the answer
])
def test_math_format_reward_where_the_box_is(text, expected):
    item = {"question": "Half of 1?", "answer": r"\frac12"}
    assert D1_TASKS["math500"].rewards(text, item) == expected


@pytest.mark.parametrize("numbers, target, answer, reward, evaluation", [
    ([12, 4, 5], 15, "(12/4)*5", 1.0, 1),
    ([12, 4, 5], 15, "12/(4*5)", 0.1, 0),              # 0.6
    ([7, 2, 4], 14, "7/2*4", 1.0, 1),                   # 3.5 on the way
    ([30, 100, 93], 23, "\n 30 - (100 - 93) \n", 1.0, 1),
    ([30, 100, 93], 23, "30-100-93", 0.1, 0),
    # the reward counts the target as a fourth number; the evaluation keeps "expr" of "expr = number"
    ([30, 100, 93], 23, "30-(100-93)=23", 0.1, 1),
    ([90, 43, 90], 43, "90/90*43", 1.0, 1),             # a repeated number, used twice
    ([90, 43, 90], 43, "43", 0.1, 0),
    ([5, 5, 3], 3, "3/(5-5)", 0.1, 0),                  # division by zero: no value
    ([49, 55, 53], 51, "49**55**53", 0.1, 0),           # eval() would never finish; "**" is refused
])
def test_countdown_rewards_with_division_and_parentheses(numbers, target, answer, reward, evaluation):
    item = {"numbers": numbers, "target": target}
    start = time.perf_counter()
    assert D1_TASKS["countdown"].rewards(f"<reasoning>\n...\n</reasoning>\n<answer>{answer}</answer>",
                                         item) == {"countdown": reward}
    assert D1_TASKS["countdown"].correct_counts(f"\\boxed{{{answer}}}", item) == (evaluation, 1)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("answer, expected", [
    # puzzle 1204340021034021: the empty cells are 2, 6, 7, 10, 13; the solution has 3, 1, 2, 4, 3 there
    ("12343412214343219999", 1.0),     # longer than 16: cut to 16
    ("01234341221434321", 0.0),        # a leading 0 shifts every cell: 2, 4, 1, 1, 4 are all wrong
    ("123", 0.2),                      # padded with "0": only cell 2 (a "3") is right
    ("", 0.0),
    ("12-34-34-12-21-43-43-21", 1.0),  # only the digits are read
])
def test_sudoku_answer_shorter_or_longer_than_16(answer, expected):
    item = {"puzzle": "1204340021034021", "solution": "1234341221434321"}
    assert D1_TASKS["sudoku"].rewards(f"<answer>{answer}</answer>", item) == {"sudoku": expected}


# ----------------------------------------------------------------------------- evaluation checks

def test_docstring_examples_of_d1_tasks():
    gsm8k = D1_TASKS["gsm8k"]
    item = gsm8k.parse({"question": "2 pens and 3 more?", "answer": "2+3=5\n#### 5"})
    assert gsm8k.correct_counts("...</reasoning>\n<answer>\n\\boxed{5}\n</answer>", item) == (1, 1)
    assert gsm8k.rewards("<reasoning>\n2+3=5\n</reasoning>\n<answer>\n5\n</answer>\n", item) == {
        "xmlcount": 0.5, "soft_format": 0.5, "strict_format": 0.5, "int": 0.5, "correctness": 2.0}
    math = D1_TASKS["math500"]
    item = math.parse({"problem": "Half of 1?", "answer": r"\frac{1}{2}"})
    assert math.correct_counts(r"... so \boxed{0.5}", item) == (1, 1)
    assert math.rewards(r"<answer>\boxed{1/2}</answer>", item) == {"correctness": 2.0, "format": 0.5}
    countdown = D1_TASKS["countdown"]
    item = countdown.parse({"input": "3,5,7", "output": "22"})
    assert item == {"numbers": [3, 5, 7], "target": 22}
    assert countdown.correct_counts("...<answer>\n\\boxed{3*5+7}\n</answer>", item) == (1, 1)
    assert countdown.rewards("<answer>3*5+7</answer>", item) == {"countdown": 1.0}
    sudoku = D1_TASKS["sudoku"]
    item = sudoku.parse({"Puzzle": "1204340021034021", "Solution": "1234341221434321"})
    assert sudoku.correct_counts("<answer>\n1234341221434321\n</answer>", item) == (5, 5)
    assert sudoku.rewards("<answer>1234341221430000</answer>", item) == {"sudoku": 0.8}
    for task in D1_TASKS.values():
        assert task.eval_prefix == "<reasoning>"


@pytest.mark.parametrize("name, item, texts", [
    ("gsm8k", {"question": "?", "answer": "1,450"}, ["\\boxed{1450}", "\\boxed{1451}", "nothing"]),
    ("gsm8k", {"question": "?", "answer": None}, ["\\boxed{5}"]),  # a published gold that is None
    ("math500", {"question": "?", "answer": "\\frac12"}, ["\\boxed{0.5}", "\\boxed{2}", ""]),
    ("countdown", {"numbers": [3, 5, 7], "target": 22}, ["\\boxed{3*5+7}", "\\boxed{3+5+7}"]),
    ("sudoku", {"puzzle": "1204340021034021", "solution": "1234341221434321"},
     ["<answer>1234341221434321</answer>", "<answer>1234341221430000</answer>", "no digits"]),
    ("sudoku", {"puzzle": "1234341221434321", "solution": "1234341221434321"}, ["<answer>1</answer>"]),
])
def test_correct_is_the_share_of_correct_counts(name, item, texts):
    task = D1_TASKS[name]
    for text in texts:
        right, total = task.correct_counts(text, item)
        assert task.correct(text, item) == (right / total if total else 0.0)
        assert 0.0 <= task.correct(text, item) <= 1.0
    if name == "sudoku" and "0" in item["puzzle"]:
        assert [task.correct(t, item) for t in texts] == [1.0, 0.8, 0.0]


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
        D1_TASKS[name].load(path)


def test_loaders_read_the_published_files(shared):
    data = shared / "data"
    gsm = D1_TASKS["gsm8k"].load(data / "gsm8k/test.jsonl")
    assert len(gsm) == 1319 and gsm[0]["answer"] == "18"
    cd = D1_TASKS["countdown"].load(data / "d1/countdown_cd3_test.jsonl")
    assert len(cd) == 256 and cd[0] == {"numbers": [30, 100, 93], "target": 23}
    sd = D1_TASKS["sudoku"].load(data / "d1/4x4_test_sudoku.csv")
    assert len(sd) == 500 and all(item["puzzle"].count("0") == 8 for item in sd)
    assert all(item["solution"] in sudoku_solutions(item["puzzle"]) for item in sd[:50])
    prompt = D1_TASKS["countdown"].eval_prompt(cd[0])
    assert prompt.endswith("</answer>\n\nNumbers: [30, 100, 93]\nTarget: 23")
    sudoku_prompt = D1_TASKS["sudoku"].rl_prompt(sd[0])
    assert sudoku_prompt.endswith(f"\n\nSolve the following Sudoku puzzle: {sd[0]['puzzle']}\n")
