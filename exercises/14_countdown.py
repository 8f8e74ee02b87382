"""
Exercise 14 (~40 min): a Countdown checker that never evaluates model output.

Replaces scoring.safe_eval and scoring.countdown_correct (the Countdown reward). Fill in both, then:
    python -m exercises check 14                 # includes hostile strings, with a time limit
    python -m exercises run 14 --stage grpo --tasks=countdown --steps=5   # YOUR checker rewards RL

Model output is untrusted: NEVER call eval() or exec() on it (the check forbids them).
"""

import re


def safe_eval(expr: str) -> int | float | None:
    """The value of an arithmetic expression, or None if it is not one: computed by YOUR parser.

    Never eval() or exec(): "__import__('os').system(...)" would run, and "9**9**9" never finishes.

    Accept: non-negative numbers (3, 12, 1.5), + - * / (true division), unary + and -,
    parentheses, blanks; the usual precedence, left to right (10-4-3 = 3, 2+3*4 = 14), as Python.
    Return None for anything else, and to stay within these bounds:
      - more than 200 characters (check first, before any work);
      - nesting deeper than 20 levels (parentheses and unary signs both count);
      - any number or intermediate value with |v| > 1e12;
      - division by zero; "**", "//", names, exponents (1e3), empty or unbalanced input.
    Grammar, for a recursive-descent parser (one function per line):
        expression := term (("+" | "-") term)*
        term       := unary (("*" | "/") unary)*
        unary      := ("+" | "-") unary | number | "(" expression ")"

    Example: safe_eval("(3+5)/2") == 4.0; safe_eval("2**3") is None; safe_eval("__import__('os')") is None
    Hint: first cut the string into tokens (numbers, and the characters + - * / ( )), then parse
    with an index into the token list; raise an exception of your own anywhere and turn it into None
    at the top.
    """
    raise NotImplementedError("exercise 14: write safe_eval")


def countdown_correct(expr: str, numbers, target) -> bool:
    """d1's Countdown check: the answer uses EXACTLY the given numbers, each as often as it is
    given, and its value (safe_eval) is within 1e-5 of target.

    The numbers an answer uses are its runs of digits. They must equal the given numbers as a
    multiset ([5, 5] needs two 5s): a set would accept a number used twice.

    Example: countdown_correct("3*5+7", [3, 5, 7], 22) is True;
             countdown_correct("3*5+7+7", [3, 5, 7], 29) is False (7 used twice)
    Hint: sorted(int(n) for n in re.findall(r"\\d+", expr)) == sorted(numbers), then your safe_eval
    (None is never correct).
    """
    raise NotImplementedError("exercise 14: write countdown_correct")
