r"""
d1's answer parsing and the rewards' building blocks, written out: what tasks_d1.py and tasks_tiny.py
score completions with.

    from scoring import last_boxed, remove_boxed, math_equiv, safe_eval
    remove_boxed(last_boxed(r"so \boxed{\frac12}."))  # r"\frac12"
    math_equiv(r"\frac12", "0.5")                       # True: the classic MATH normalisation
    safe_eval("3*(5+7)")                                # 36: our own parser, never eval()

As in d1's released code (github.com/dllm-reasoning/d1):
- the evaluation parsers (gsm8k_eval_answer, math_eval_answer, countdown_eval_equation,
  sudoku_eval_answer) reproduce, detail by detail, the code behind Table 1 of the d1 paper (Zhao et
  al. 2025, arXiv 2504.12216, Sec. 4), so that the published LLaDA generations rescore to the paper's
  numbers to the hundredth;
- countdown_correct and sudoku_cells are the checks that d1's Countdown and Sudoku rewards are
  built from (GSM8K's format rewards live in tasks_d1.py, next to the rewards that use them).

Every function here runs in time linear in the text. d1 writes its scans as regexes; several of them
(e.g. `<answer>(.*?)</answer>` on a million "<answer>" tags, `.*?(\d{16})\s*</answer>` on digits and
blanks) backtrack quadratically, and a reward must return in well under a second whatever a model
writes. So each such regex is replaced by a scan with the same result; the docstring names the regex
and tests/test_scoring.py checks the two agree on random strings.

Deviations from d1's released code (none changes a score on the published generations):
1. Countdown expressions are computed by safe_eval, not eval(): numbers, + - * /, unary signs and
   parentheses only; "**" and "//" are invalid (eval() takes them, and "49**55**53" never finishes);
   at most 200 characters, 20 levels of nesting, |value| <= 1e12.
2. safe_eval treats every ASCII blank, newlines included, as a space (eval() rejects a newline
   outside parentheses).
"""
import re

from tokenizer import EOS, EOT  # the end-of-turn tokens d1's Sudoku parser looks for

_SPACE = re.compile(r"\s*")  # Python's \s: the same blanks as d1's regexes
_NUMBER_IN_TEXT = re.compile(r"-?\d+\.?\d*")  # d1's "a number" in GSM8K answers
_DIGITS_AND_BLANKS = re.compile(r"[\d\s]*")


# ----------------------------------------------------------------------------- tags and boxes

def tag_contents(text: str, start: str, end: str, dotall: bool = True):
    """Yield every `start ... end` content, left to right, not overlapping.

    Same as re.findall(re.escape(start) + "(.*?)" + re.escape(end), text, re.DOTALL if dotall else 0)
    in linear time. Without dotall a content may not hold a newline: that start is skipped.
    """
    pos, j, newline = 0, -1, -1  # j, newline: the next `end` and "\n" found so far (reused while ahead)
    while (i := text.find(start, pos)) >= 0:
        k = i + len(start)
        if j < k:
            j = text.find(end, k)
            if j < 0:  # no end after this start, so none after any later start either
                return
        if not dotall and newline < k:
            newline = text.find("\n", k)
            newline = len(text) if newline < 0 else newline
        if not dotall and newline < j:
            pos = i + 1
            continue
        yield text[k:j]
        pos = j + len(end)


def first_between(text: str, start: str, ends: tuple) -> str | None:
    """Text between the first `start` and the nearest of `ends` after it; None if there is none.

    Same as re.search(start + "(.*?)(?:" + "|".join(ends) + ")", text, re.DOTALL).group(1).
    """
    i = text.find(start)
    if i < 0:
        return None
    i += len(start)
    found = [j for j in (text.find(end, i) for end in ends) if j >= 0]
    return text[i:min(found)] if found else None


def first_answer(text: str) -> str | None:
    """Content of the first <answer>...</answer> (d1's evaluation parsers), unstripped."""
    return next(tag_contents(text, "<answer>", "</answer>"), None)


def last_answer(text: str) -> str | None:
    """Content of the last <answer>...</answer> (d1's Countdown and Sudoku rewards), unstripped."""
    last = None
    for last in tag_contents(text, "<answer>", "</answer>"):
        pass
    return last


_BRACE = re.compile(r"[{}]")


def last_boxed(text: str) -> str | None:
    r"""The classic MATH-benchmark "last boxed" helper, in the variant of d1's released code.

    "\boxed " (with a space) anywhere: "\boxed " + what follows the last one, up to a "$".
    Else from the last "\boxed" (else the last "\fbox") to its matching brace; None if the braces
    never close. With neither, d1's variant returns the whole text (the classic returns None).
    """
    if "\\boxed " in text:
        return "\\boxed " + text.rpartition("\\boxed ")[2].partition("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for m in _BRACE.finditer(text, start):
        depth += 1 if m.group() == "{" else -1
        if depth == 0 and m.group() == "}":
            return text[start:m.end()]
    return None


def remove_boxed(s: str) -> str:
    r"""Strip a leading "\boxed " or a "\boxed{...}" wrapper; anything else comes back unchanged."""
    if s.startswith("\\boxed "):
        return s[len("\\boxed "):]
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[len("\\boxed{"):-1]
    return s


# ----------------------------------------------------------------------------- safe arithmetic

MAX_EXPR_CHARS = 200  # a 3-number Countdown answer needs ~15; the bound keeps hostile input cheap
MAX_DEPTH = 20  # nesting of parentheses and unary signs (Python's own parser stops at 200)
MAX_ABS = 1e12  # refuse huge intermediate values (no target is near them)

_LITERAL = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+")  # Python's int and float literals, ASCII digits


class _Invalid(Exception):
    pass


def _tokens(expr: str) -> list:
    """Numbers (int or float, as Python reads them) and the one-character operators."""
    out, i = [], 0
    while i < len(expr):
        c = expr[i]
        if c in " \t\n\r\f\v":
            i += 1
        elif c in "+-*/()":
            out.append(c)
            i += 1
        elif m := _LITERAL.match(expr, i):
            text, i = m.group(), m.end()
            if "." in text:
                out.append(float(text))
            elif text[0] == "0" and text.strip("0"):  # as in Python 3, "07" is not a number
                raise _Invalid
            else:
                out.append(int(text))
        else:
            raise _Invalid
    return out


def _checked(value):
    if abs(value) > MAX_ABS:
        raise _Invalid
    return value


class _Parser:
    """Recursive descent over the grammar (left-associative, usual precedence, as in Python):

        expression := term (("+" | "-") term)*
        term       := unary (("*" | "/") unary)*
        unary      := ("+" | "-") unary | number | "(" expression ")"
    """

    def __init__(self, tokens):
        self.tokens, self.i = tokens, 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self):
        self.i += 1
        return self.tokens[self.i - 1]

    def expression(self, depth):
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op, rhs = self.take(), self.term(depth)
            value = _checked(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth):
        value = self.unary(depth)
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.unary(depth)
            if op == "/" and rhs == 0:
                raise _Invalid  # eval() raises ZeroDivisionError: invalid as well
            value = _checked(value * rhs if op == "*" else value / rhs)  # "/" is true division
        return value

    def unary(self, depth):
        if depth > MAX_DEPTH:
            raise _Invalid
        tok = self.take() if self.i < len(self.tokens) else None
        if tok in ("+", "-"):
            value = self.unary(depth + 1)
            return -value if tok == "-" else value
        if tok == "(":
            value = self.expression(depth + 1)
            if self.i >= len(self.tokens) or self.take() != ")":
                raise _Invalid
            return value
        if isinstance(tok, (int, float)):
            return _checked(tok)
        raise _Invalid


def safe_eval(expr: str) -> int | float | None:
    """Value of an arithmetic expression, or None if it is not one (or breaks a bound).

    safe_eval("(3+5)/2") == 4.0; safe_eval("2**3"), safe_eval("1/0"), safe_eval("__import__('os')")
    are all None. Nothing is ever executed: this is a parser, not eval().
    """
    if len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        parser = _Parser(_tokens(expr))
        value = parser.expression(0)
    except _Invalid:
        return None
    return value if parser.i == len(parser.tokens) else None


def numbers_used(expr: str, limit: int) -> list[int] | None:
    """Sorted integers written in expr (every run of digits, as d1's validation reads them).

    None if there are more than `limit` of them or one has over 20 digits: then they cannot be the
    given numbers, and d1's check fails too (it reads them all first).
    """
    runs = []
    for m in re.finditer(r"\d+", expr):
        if len(runs) == limit or len(m.group()) > 20:
            return None
        runs.append(int(m.group()))
    return sorted(runs)


def countdown_correct(expr: str, numbers, target) -> bool:
    """d1's Countdown check: uses exactly the given numbers, each once, and equals target (1e-5)."""
    if numbers_used(expr, len(numbers)) != sorted(numbers):
        return False
    value = safe_eval(expr)
    return value is not None and abs(value - target) < 1e-5


# ----------------------------------------------------------------------------- MATH normalisation

def _fix_fracs(s: str) -> str:
    r"""\frac12 -> \frac{1}{2}, \frac1b -> \frac{1}{b}; raises on a bare "\frac" at the end."""
    head, *parts = s.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if part[0] == "{":  # IndexError on an empty part: the caller falls back to raw strings
            out += part
        elif len(part) < 2:
            return s
        elif part[1] == "{":
            out += "{" + part[0] + "}" + part[1:]
        else:
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
    return out


def _fix_a_slash_b(s: str) -> str:
    r""" "3/4" -> \frac{3}{4} when both sides are integers written plainly; else unchanged."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def _remove_right_units(s: str) -> str:
    r"""Drop a trailing unit introduced by "\text{ "; raises if there are two of them."""
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise ValueError("two units")
    return parts[0]


def _fix_sqrt(s: str) -> str:
    r"""\sqrt3 -> \sqrt{3}; raises on a bare "\sqrt" at the end."""
    head, *parts = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in parts)


def normalize_math(s: str) -> str:
    """The classic MATH-benchmark answer normalisation, step by step as in d1's released code."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""),
                     ("\\$", "")):
        s = s.replace(old, new)
    s = _remove_right_units(s)
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0]) <= 2:  # "k = 5" -> " 5"
        s = parts[1]
    s = _fix_fracs(_fix_sqrt(s).replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def math_equiv(a: str | None, b: str | None) -> bool:
    """Equal after normalisation; if normalising raises, equal as raw strings."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return normalize_math(a) == normalize_math(b)
    except (IndexError, ValueError):
        return a == b


# ----------------------------------------------------------------------------- evaluation parsers

def _as_float(s: str, pick) -> float | None:
    r"""float(s), else float(pick(the numbers in s)), else None (float() reads every digit \d does)."""
    try:
        return float(s)
    except ValueError:
        numbers = _NUMBER_IN_TEXT.findall(s)
        return float(pick(numbers)) if numbers else None


def gsm8k_eval_answer(text: str) -> float | None:
    r"""d1's GSM8K answer: the first usable \boxed{...} content, else the first <answer> content."""
    # d1's regex is r"\\boxed{(.*?)}" without DOTALL: up to the first "}", on one line
    for content in tag_contents(text, "\\boxed{", "}", dotall=False):
        content = content.strip()
        if content and content.strip(".") != "":  # skip empty and dots-only ("...") boxes
            value = _as_float(content, lambda numbers: numbers[0])
            if value is not None:
                return value
    answer = first_answer(text)
    if answer is not None and answer.strip():
        return _as_float(answer.strip(), lambda numbers: numbers[-1])
    return None


def math_eval_answer(text: str) -> str | None:
    """d1's MATH500 answer: remove_boxed(last_boxed(text)); if None or empty, the <answer> content."""
    boxed = last_boxed(text)
    answer = None if boxed is None else remove_boxed(boxed)
    if not answer:
        tag = first_answer(text)
        if tag is not None:
            answer = tag.strip()
    return answer


def _equation_lhs(eq: str) -> str | None:
    r"""The first `expr = number`'s expr: re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", eq).group(1).

    A match can only be a whole maximal run of expression characters followed by "=" and a digit,
    dot or space; the regex retries every start inside a run (quadratic), this looks at each run once.
    """
    for run in re.finditer(r"[0-9+\-*/() ]+", eq):
        j = run.end()
        if eq[j:j + 1] == "=" and j + 1 < len(eq) and eq[j + 1] in "0123456789. ":
            return run.group()
    return None


def countdown_eval_equation(text: str) -> str:
    """d1's Countdown equation: the last box's content, else the first <answer>, else the text."""
    boxed = last_boxed(text)
    if boxed is not None:
        eq = remove_boxed(boxed)  # the whole text when there is no box at all
    else:
        answer = first_answer(text)
        eq = answer.strip() if answer is not None else text
    eq = eq.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    lhs = _equation_lhs(eq)
    return eq if lhs is None else lhs.strip()


def _fenced_digits(text: str) -> str | None:
    r"""re.search(r"<answer>.*?```\s*([\d\s]+)```", text, re.DOTALL).group(1), linear time."""
    i = text.find("<answer>")
    if i < 0:
        return None
    pos = i + len("<answer>")  # only the first <answer> matters: later ones see fewer fences
    while (fence := text.find("```", pos)) >= 0:
        k = fence + 3
        blanks = _SPACE.match(text, k).end()
        end = _DIGITS_AND_BLANKS.match(text, k).end()
        if end > k and text.startswith("```", end):
            return text[blanks:end] if blanks < end else text[end - 1:end]  # \s* gives one back
        pos = fence + 1
    return None


def _after_answer(text: str) -> str | None:
    r"""re.search(r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)", text, re.DOTALL)."""
    i = text.find("</answer>")
    if i < 0:
        return None
    start = _SPACE.match(text, i + len("</answer>")).end()
    ends = [j for j in (text.find(EOT, start), text.find(EOS, start)) if j >= 0]
    ends.append(len(text) - 1 if text.endswith("\n") and len(text) - 1 >= start else len(text))
    return text[start:min(ends)]  # "$" also matches before a final newline


def _digits_before_answer_end(text: str) -> str | None:
    r"""re.search(r".*?(\d{16})\s*</answer>", text, re.DOTALL).group(1), linear time."""
    pos = 0
    while (q := text.find("</answer>", pos)) >= 0:
        w = q
        while w > 0 and text[w - 1].isspace():
            w -= 1
        if w >= 16 and re.fullmatch(r"\d{16}", text[w - 16:w]):
            return text[w - 16:w]
        pos = q + 1
    return None


def _standalone_16_digits(text: str) -> str | None:
    m = re.search(r"\b(\d{16})\b", text)
    return m.group(1) if m else None


def sudoku_eval_answer(text: str) -> str:
    """d1's Sudoku answer string: the first non-empty of five patterns, blanks removed ("" if none).

    In order: digits in a code fence inside <answer>; <answer> up to <|eot_id|>, <|endoftext|> or
    </answer>; after </answer> up to <|eot_id|>, <|endoftext|> or the end; 16 digits just before
    </answer>; any standalone 16-digit run. The caller pads with "0" or cuts to 16 (sudoku_cells).
    """
    for pattern in (_fenced_digits,
                    lambda t: first_between(t, "<answer>", (EOT, EOS, "</answer>")),
                    _after_answer, _digits_before_answer_end, _standalone_16_digits):
        found = pattern(text)
        if found is not None and found.strip():
            return re.sub(r"\s", "", found)
    return ""


def sudoku_cells(answer: str, puzzle: str, solution: str) -> tuple[int, int]:
    """(correctly filled empty cells, empty cells): answer padded with "0" or cut to 16 digits."""
    empty = [i for i, c in enumerate(puzzle) if c == "0"]
    if not answer:
        return 0, len(empty)
    answer = (answer + "0" * 16)[:16]
    return sum(answer[i] == solution[i] for i in empty), len(empty)


def sudoku_share(answer: str | None, puzzle: str, solution: str) -> float:
    """d1's Sudoku reward on the content of the answer tags: the share of the empty cells that its
    digits (padded or cut to 16) fill right; 0.0 without an answer."""
    if answer is None:
        return 0.0
    right, empty = sudoku_cells("".join(c for c in answer if c.isdigit()), puzzle, solution)
    return right / empty if empty else 0.0
