"""
The checking machinery behind `python -m exercises check NN`: run a student's function and the
project's own on the same inputs, and turn the first difference into a message a student can act on.

    from exercises.check import Call, Seeded, expect, require
    call = Call(diffusion.forward_process, x0, 99, generator=Seeded(0))   # the inputs, described
    expect(call, call.run(diffusion.forward_process), call.run(student.forward_process),
           what=("xt", "is_masked", "p"), mistakes={"used one t for the whole batch": wrong_output})

A check is a plain function of the student's names (a namespace) that raises Fail at the first
problem. The message names the call (its inputs), what was expected, what came back, where they
first differ, and, when the student's output equals a known mistake's, which mistake that is.
Call.run turns NotImplementedError into NotDone ("not implemented yet", no traceback), any other
exception into a Fail that quotes the student's line, and refuses a function that changed its inputs.
"""

import importlib.util
import inspect
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from model import Config, Model

HERE = Path(__file__).resolve().parent


# -----------------------------------------------------------------------------
# Outcomes, and the inputs checks share


class Fail(Exception):
    """A check found a problem; str(e) is the whole message for the student."""


class NotDone(Exception):
    """The student's function still raises NotImplementedError."""


@dataclass
class Result:
    passed: bool
    message: str


class Seeded:
    """An argument that becomes a fresh torch.Generator().manual_seed(seed) for every run, so the
    student's function and the project's draw exactly the same random numbers."""

    def __init__(self, seed):
        self.seed = seed

    def __repr__(self):
        return f"torch.Generator().manual_seed({self.seed})"


def small_model(seed=0):
    """A small random LLaDA in eval mode: 2 layers of width 32, vocabulary 64, [MASK] = 60, EOS = 61.
    Its weights are drawn wide (std 0.3, not 0.02) so that its outputs depend clearly on its inputs:
    a wrong input (a noised prompt, a missing attention mask) then changes the loss visibly."""
    config = Config(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, mlp_hidden_size=64, vocab_size=64,
                    embedding_size=64, max_sequence_length=64, mask_token_id=60, eos_token_id=61, pad_token_id=61,
                    init_std=0.3)
    return Model(config).init_weights(seed=seed).eval()


# -----------------------------------------------------------------------------
# Showing values


def show(x, limit=16):
    """A value as a student reads it: small tensors in full (4 significant digits), large ones by shape."""
    if isinstance(x, torch.Tensor):
        head = f"tensor{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
        if x.numel() > limit:
            return head
        values = x.detach().cpu()
        values = values.tolist() if not values.is_floating_point() else _rounded(values.double().tolist())
        return f"{head} {values}"
    if isinstance(x, torch.nn.Module):
        return f"a {type(x).__name__} ({sum(p.numel() for p in x.parameters()):,} parameters)"
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, SimpleNamespace):
        return "namespace(" + ", ".join(f"{k}={show(v)}" for k, v in vars(x).items()) + ")"
    text = repr(x)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"


def _rounded(values):
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return float(f"{values:.4g}")


# -----------------------------------------------------------------------------
# Calling the student's code


class Call:
    """One call's inputs: run(fn) calls fn on fresh copies of them; text describes them."""

    def __init__(self, reference, *args, label=None, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.name = label or reference.__name__
        try:
            bound = inspect.signature(reference).bind_partial(*args, **kwargs).arguments
        except (TypeError, ValueError):
            bound = {f"arg{i}": a for i, a in enumerate(args)} | kwargs
        self.text = f"{self.name}(" + ", ".join(f"{k}={show(v)}" for k, v in bound.items()) + ")"
        self.arg_names = list(bound)[:len(args)] + list(kwargs)
        self.last_args = None  # the copies the last run() passed: read a leaf's .grad from them

    def run(self, fn):
        """fn(*args, **kwargs) on copies: tensors cloned (a tensor that requires grad becomes a new
        leaf), Seeded made a fresh generator. A function that changes an input in place fails."""
        args = [_fresh(a) for a in self.args]
        kwargs = {k: _fresh(v) for k, v in self.kwargs.items()}
        self.last_args = args + list(kwargs.values())
        out = attempt(fn, self.text, *args, **kwargs)
        originals = list(self.args) + list(self.kwargs.values())
        for name, before, after in zip(self.arg_names, originals, self.last_args):
            if isinstance(before, torch.Tensor) and not torch.equal(before.detach(), after.detach()):
                raise Fail(f"{self.name} changed its input `{name}` in place.\n  call: {self.text}\n"
                           "  hint: build a new tensor (torch.where(...), x.clone()) instead of writing into an input.")
        return out


def _fresh(value):
    if isinstance(value, Seeded):
        return torch.Generator().manual_seed(value.seed)
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def attempt(fn, text, *args, **kwargs):
    """fn(*args, **kwargs); NotImplementedError -> NotDone, any other error -> Fail quoting the line."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotDone(getattr(fn, "__qualname__", text)) from None
    except (Fail, NotDone):
        raise
    except Exception as e:  # the student's bug: say where, in their file if it is on the stack
        raise Fail(f"{text.split('(')[0]} raised {type(e).__name__}: {e}\n  call: {text}\n{where(e)}") from None


def where(error):
    """"  at exercises/04_x.py:12: `line`" for the deepest frame in an exercise file (else the last)."""
    frames = traceback.extract_tb(error.__traceback__)
    mine = [f for f in frames if Path(f.filename).parent == HERE and Path(f.filename).name[:2].isdigit()]
    f = (mine or frames)[-1]
    path = Path(f.filename)
    shown = f"exercises/{path.name}" if path.parent == HERE else path.name
    return f"  at {shown}:{f.lineno}: `{(f.line or '').strip()}`"


# -----------------------------------------------------------------------------
# Comparing


def expect(call, expected, got, what="output", atol=1e-5, rtol=1e-4, exact_dtype=False, mistakes=None,
           hint=None, properties=()):
    """Raise Fail unless got matches expected (tensors, numbers, bools, tuples, dicts), naming the
    first difference. mistakes: {"what the student probably did": the output that mistake gives};
    properties: [(holds, "the property")], the broken ones are listed too."""
    problem = difference(expected, got, what, atol, rtol, exact_dtype)
    if problem is None:
        return
    lines = [f"wrong {problem}", f"  call: {call.text}"]
    for description, wrong in (mistakes or {}).items():
        if difference(wrong, got, what, atol, rtol, False) is None:
            lines.append(f"  likely cause: your output is exactly what you get if you {description}.")
            break
    lines += [f"  broken property: {text}" for holds, text in properties if not holds()]
    if hint:
        lines.append(f"  hint: {hint}")
    raise Fail("\n".join(lines))


def difference(expected, got, what, atol, rtol, exact_dtype):
    """None if got matches expected, else a description of the first difference."""
    if isinstance(expected, (tuple, list)):
        names = what if isinstance(what, (tuple, list)) else [f"{what}[{i}]" for i in range(len(expected))]
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"return value: expected {len(expected)} values ({', '.join(names)}), got {show(got)}"
        for name, e, g in zip(names, expected, got):
            if (problem := difference(e, g, name, atol, rtol, exact_dtype)) is not None:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{what}: expected a dict with keys {sorted(expected)}, got {show(got)}"
        for key in expected:
            problem = difference(expected[key], got[key], f"{what}[{key!r}]", atol, rtol, exact_dtype)
            if problem is not None:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        return _tensor_difference(expected, got, what, atol, rtol, exact_dtype)
    if expected is None or isinstance(expected, (bool, str)):
        same = got == expected and type(got) is type(expected)
        return None if same else f"{what}: expected {show(expected)}, got {show(got)}"
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool) or abs(got - expected) > atol + rtol * abs(expected):
        return f"{what}: expected {show(expected)}, got {show(got)}"
    return None


def _tensor_difference(expected, got, what, atol, rtol, exact_dtype):
    if not isinstance(got, torch.Tensor):
        return f"{what}: expected a tensor, got {show(got)}"
    if got.shape != expected.shape:
        return f"{what}: expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    if _kind(got) != _kind(expected) or (exact_dtype and got.dtype != expected.dtype):
        return f"{what}: expected dtype {expected.dtype}, got {got.dtype}"
    e, g = expected.detach().cpu(), got.detach().cpu()
    if _kind(expected) == "float":
        e, g = e.double(), g.double()
        same = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    else:
        same = g == e
    if same.all():
        return None
    index = tuple(same.logical_not().nonzero()[0].tolist())
    at = f" at index {list(index)}" if index else ""
    if e.dim() >= 2 and e.numel() > 16 and e.size(-1) <= 16:  # too big to print: show the row that differs
        row = list(index[:-1])
        shown = (f"  expected row {row}: {show(expected.detach().cpu()[index[:-1]])}\n"
                 f"  got row {row}:      {show(got.detach().cpu()[index[:-1]])}")
    else:
        shown = f"  expected: {show(expected)}\n  got:      {show(got)}"
    return f"{what}: first mismatch{at}: expected {show(e[index].item())}, got {show(g[index].item())}\n{shown}"


def _kind(t):
    return "bool" if t.dtype == torch.bool else "float" if t.is_floating_point() else "integer"


def require(condition, problem, call=None, hint=None):
    """Raise Fail(problem) unless condition: for properties (a rate, a sum, an invariant). problem may
    be a function that builds the message (only called when the property is broken)."""
    if not condition:
        lines = [f"broken property: {problem() if callable(problem) else problem}"]
        lines += ([f"  call: {call.text}"] if call else []) + ([f"  hint: {hint}"] if hint else [])
        raise Fail("\n".join(lines))


# -----------------------------------------------------------------------------
# Loading a student's file and running a check


def load_file(path):
    """Import exercises/NN_name.py as a module (its name starts with a digit, so not by `import`)."""
    spec = importlib.util.spec_from_file_location(f"exercise_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise Fail(f"exercises/{path.name} does not load: {type(e).__name__}: {e}\n{where(e)}") from None
    return module


def run_check(check_fn, names, label, source=None):
    """Result of check_fn(names): passed with what was checked, or the first problem in words.
    source: the student's file, named in the "not implemented yet" message."""
    try:
        check_fn(names)
    except NotDone as e:
        where_ = f" in {source}" if source else ""
        return Result(False, f"{label}: not implemented yet: `{e}`{where_} still raises NotImplementedError.\n"
                             "  Read its docstring, replace the `raise NotImplementedError` line with your code, "
                             "and check again.")
    except Fail as e:
        return Result(False, f"{label}: FAILED\n{e}")
    checked = "\n".join("  " + line for line in inspect.getdoc(check_fn).splitlines())
    return Result(True, f"{label}: passed. Checked:\n{checked}")

