"""scoring.py (and GSM8K's format rewards in tasks_d1.py): d1's parsers, checked by hand and against
d1's own regexes on random strings, and the safe arithmetic evaluator."""
import random
import re
from fractions import Fraction

import pytest

import scoring
from scoring import (countdown_eval_equation, first_between, gsm8k_eval_answer, last_boxed, math_equiv,
                     math_eval_answer, remove_boxed, safe_eval, sudoku_cells, sudoku_eval_answer,
                     sudoku_share, tag_contents)
from tasks_d1 import count_xml, soft_format, strict_format, xml_answer
from tokenizer import EOS, EOT


# ----------------------------------------------------------------------------- d1's evaluation parsing

def test_last_boxed_and_remove_boxed():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{1}{2}} c") == r"\boxed{\frac{1}{2}}"
    assert last_boxed(r"x \boxed 5$ y") == r"\boxed 5"
    assert last_boxed(r"\fbox{3}") == r"\fbox{3}"
    assert last_boxed("no box here") == "no box here"  # d1's variant: the whole text
    assert last_boxed(r"\boxed{1") is None
    assert remove_boxed(r"\boxed{12}") == "12" and remove_boxed(r"\fbox{3}") == r"\fbox{3}"
    assert remove_boxed(last_boxed(r"so \boxed{\frac12}.")) == r"\frac12"  # the module's example


def test_eval_parsers():
    assert gsm8k_eval_answer(r"\boxed{...} \boxed{x = 12} \boxed{7}") == 12.0
    assert gsm8k_eval_answer("\\boxed{1\n2} <answer>\nit is 3 or 4\n</answer>") == 4.0  # one line only
    assert gsm8k_eval_answer("nothing") is None
    assert math_eval_answer(r"<answer>\boxed{}</answer>") == r"\boxed{}"  # empty box: the tag content
    assert math_equiv(r"\left( 3, \frac12 \right)", r"(3,\frac{1}{2})")
    assert math_equiv("x = 5", "5") and math_equiv(r"10\%", "10") and not math_equiv("1", "2")
    assert math_equiv(r"\frac", r"\frac") and not math_equiv(r"\frac", "\\frac ")  # raw fallback
    assert math_equiv(r"\frac12", "0.5")
    assert countdown_eval_equation(r"so \boxed{3 \times 5 + 7 = 22}") == "3 * 5 + 7"
    assert countdown_eval_equation("<answer> 8/2 </answer>") == "<answer> 8/2 </answer>"  # no box: all
    assert countdown_eval_equation(r"\boxed{8 <answer> 8/2 </answer>") == "8/2"  # box never closes
    assert sudoku_eval_answer("<answer>\n```\n1234 3412\n```</answer>") == "12343412"
    assert sudoku_eval_answer("<answer>\n1234\n3412<|eot_id|>") == "12343412"
    assert sudoku_eval_answer("</answer>\n 9999 <|endoftext|>") == "9999"
    assert sudoku_eval_answer("grid 1234341221434321.") == "1234341221434321"
    assert sudoku_cells("12", "1204340021034021", "1234341221434321") == (0, 5)


def test_sudoku_share():
    puzzle, solution = "1204340021034021", "1234341221434321"
    assert sudoku_share("\n1234 3412 2143 4321\n", puzzle, solution) == 1.0
    assert sudoku_share("12343412", puzzle, solution) == 0.6  # padded with zeros
    assert sudoku_share(None, puzzle, solution) == 0.0 and sudoku_share("", puzzle, solution) == 0.0
    assert sudoku_share("1", solution, solution) == 0.0  # no empty cell: nothing to get right


def test_gsm8k_format_helpers():
    assert xml_answer("<answer> 5 </answer> <answer>\n6\n</answer>") == "6"  # the last one
    assert xml_answer("<answer>\n7") == "7" and xml_answer("no tags") == "no tags"
    good = "<reasoning>\n2+3=5\n</reasoning>\n<answer>\n5\n</answer>\n"
    assert count_xml(good) == 0.5 and soft_format(good) and strict_format(good)
    assert count_xml(good + "bye!") == pytest.approx(0.5 - 0.004)  # trailing text charged once
    assert count_xml(good[:-1]) == 0.5 and not strict_format(good + "x")


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
    assert safe_eval("3*(5+7)") == 36


@pytest.mark.parametrize("bad", ["2**3", "2//3", "1/0", "1/(2-2)", "()", "3 4", "2(3)", "07+1", "1.2.3",
                                 "__import__('os')", "\u0663+\u0664", "(" * 30 + "1" + ")" * 30,
                                 "-" * 50 + "1", "1+" * 150 + "1", "9" * 20, "", "3=3", "1e5"])
def test_safe_eval_refuses(bad):
    assert safe_eval(bad) is None
