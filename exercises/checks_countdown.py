"""
Check of exercise 14 (scoring.py): a Countdown checker that never evaluates model output.

Model output is untrusted, so the student's code runs in a child process (fork) in which eval()
and exec() raise, and every input must be answered within TIME_LIMIT seconds: a checker that calls
eval, or computes 9**9**9, is stopped and named instead of hanging the classroom's machine.
"""

import builtins
import multiprocessing

import scoring as ref
from .check import Fail, NotDone, show, where

TIME_LIMIT = 2.0  # seconds per input; the project's parser answers each in well under a millisecond

SAFE_EVAL_CASES = [  # (expression, why it is here)
    ("1+2", "a sum"), ("3*(5+7)", "parentheses"), ("(3+5)/2", "true division gives a float"),
    ("10-4-3", "minus is left-associative: (10-4)-3"), ("2+3*4", "* binds tighter than +"),
    ("8/4/2", "/ is left-associative"), ("-3+5", "a unary minus"), ("-(2+3)", "a unary minus on parentheses"),
    ("1 - -1", "a unary minus after an operator"), (" 7 * 8 ", "blanks are ignored"), ("((((1))))", "nesting"),
    ("1.5*2", "a decimal number"), ("100", "a lone number"),
    ("", "empty"), ("1/0", "division by zero"), ("5/(3-3)", "division by zero"), ("2**3", "no powers"),
    ("7//2", "no floor division"), ("(1+2", "unbalanced"), ("1+2)", "unbalanced"), ("1+", "a dangling operator"),
    ("1 2", "two numbers, no operator"), ("()", "empty parentheses"), ("abc", "a name"), ("1e3", "no exponents"),
    ("__import__('os').getcwd()", "code, not arithmetic"), ("2**999999", "a huge power"),
    ("9**9**9", "a power that never finishes"), ("(" * 30 + "1" + ")" * 30, "deeper than 20 levels"),
    ("-" * 50 + "1", "50 unary signs: deeper than 20 levels"), ("99999999*99999999*99999999", "above 1e12"),
    ("10000000000000+1", "a number above 1e12"), ("1+" * 100_000 + "1", "200,001 characters: over the bound of 200"),
    ("(" * 10_000 + "1" + ")" * 10_000, "10,000 nested parentheses"),
]
COUNTDOWN_CASES = [  # (expression, numbers, target, why)
    ("3*5+7", (3, 5, 7), 22, "a right answer"), ("7+3*5", (3, 5, 7), 22, "the numbers in another order"),
    ("3*5+7", (3, 5, 7), 23, "the wrong target"), ("3*5+7+7", (3, 5, 7), 29, "7 used twice"),
    ("5*5-3", (3, 5, 7), 22, "5 used twice and 7 not at all"), ("3*5", (3, 5, 7), 15, "7 not used"),
    ("(5-1)/2", (2, 5, 1), 2, "division"), ("12/4+1", (12, 4, 1), 4, "a two-digit number"),
    ("5+5", (5, 5), 10, "a number given twice, used twice"), ("5", (5, 5), 5, "a number given twice, used once"),
    ("7/2", (7, 2), 3.5, "a fractional target"), ("10/3", (10, 3), 10 / 3, "equal within 1e-5"),
    ("2**3*1", (2, 3, 1), 8, "no powers"), ("__import__('os').system('true')", (1, 2, 3), 6, "code"),
    ("1+" * 100_000 + "1", (1,) * 100_001, 100_001, "an answer far over the length bound"),
]


def check_countdown(s):
    """safe_eval on 34 strings: 13 arithmetic expressions give the value of scoring.safe_eval (within
    1e-9), the rest give None (division by zero, powers, names, unbalanced or dangling operators,
    nesting deeper than 20, values above 1e12, inputs over 200 characters, 10,000 nested
    parentheses), each within 2 s and without eval() or exec(); countdown_correct on 15 answers
    (numbers used twice or not at all, two-digit numbers, fractional targets, code) agrees with
    scoring.countdown_correct."""
    calls = [("safe_eval", (expr,), ref.safe_eval(expr), why) for expr, why in SAFE_EVAL_CASES]
    calls += [("countdown_correct", (e, n, t), ref.countdown_correct(e, n, t), why) for e, n, t, why in COUNTDOWN_CASES]
    functions = {"safe_eval": s.safe_eval, "countdown_correct": s.countdown_correct}
    for (name, args, expected, why), (status, value) in zip(calls, sandboxed(functions, calls)):
        text = f"{name}({', '.join(show(a) for a in args)})   [{why}]"
        if status == "not done":
            raise NotDone(name)
        if status == "timeout":
            raise Fail(f"{name} did not return within {TIME_LIMIT:.0f} s\n  call: {text}\n  hint: refuse a string "
                       "over 200 characters before any work, support only + - * / and parentheses, and bound the "
                       "nesting depth and the size of every value")
        if status == "eval":
            raise Fail(f"{name} called {value}: model output is untrusted, never run it as code\n  call: {text}\n"
                       "  hint: read the string yourself: a tokenizer (numbers, operators, parentheses) and a "
                       "recursive-descent parser (expression := term (+|- term)*, term := unary (*|/ unary)*, ...)")
        if status == "error":
            raise Fail(f"{name} raised {value}\n  call: {text}\n  hint: a checker answers every string; return "
                       f"{'None' if name == 'safe_eval' else 'False'} for anything it cannot read")
        if not _same(expected, value):
            raise Fail(f"wrong {name} result: expected {show(expected)}, got {show(value)}\n  call: {text}")


def _same(expected, got):
    if expected is None or isinstance(expected, bool):
        return got is expected or (isinstance(expected, bool) and got == expected and isinstance(got, bool))
    is_number = isinstance(got, (int, float)) and not isinstance(got, bool)
    return is_number and abs(got - expected) <= 1e-9 * max(1, abs(expected))


# -----------------------------------------------------------------------------
# The sandbox


class _Forbidden(BaseException):
    """Raised by eval/exec in the child; a BaseException, so `except Exception` cannot hide it."""


def _forbid(name, called):
    def refuse(*args, **kwargs):
        called.append(f"{name}()")
        raise _Forbidden
    return refuse


def _child(connection, functions, calls):
    """In the child: eval and exec raise; answer each call with (status, value) as soon as it returns."""
    called = []  # a checker that catches even BaseException is still caught calling eval
    builtins.eval, builtins.exec = _forbid("eval", called), _forbid("exec", called)
    for name, args, _, _ in calls:
        try:
            result = ("ok", functions[name](*args))
        except NotImplementedError:
            result = ("not done", None)
        except _Forbidden:
            pass
        except BaseException as e:  # RecursionError, MemoryError, ...: the student's checker raised
            result = ("error", f"{type(e).__name__}: {str(e)[:200]}\n{where(e)}")
        if called:
            result = ("eval", called[0])
        try:
            connection.send(result)
        except Exception:  # an unpicklable value: send its description
            connection.send(("ok", repr(result[1])[:200]))


def sandboxed(functions, calls):
    """Yield (status, value) per call, run in a forked child with TIME_LIMIT per call: status is
    "ok", "error", "eval" (it called eval or exec), "not done" or "timeout" (the child is then killed)."""
    if "fork" not in multiprocessing.get_all_start_methods():  # Windows: no child, no time bound
        yield from _in_process(functions, calls)
        return
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(send, functions, calls), daemon=True)
    child.start()
    send.close()
    try:
        for _ in calls:
            if not receive.poll(TIME_LIMIT):
                yield "timeout", None
                return
            yield receive.recv()
    finally:
        child.kill()
        child.join()


def _in_process(functions, calls):
    for name, args, _, _ in calls:
        try:
            yield "ok", functions[name](*args)
        except NotImplementedError:
            yield "not done", None
        except Exception as e:
            yield "error", f"{type(e).__name__}: {e}"
