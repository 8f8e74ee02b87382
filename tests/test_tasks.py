"""tasks.py: the one Task interface that both task families implement; and what holds for every task
of both (hostile output is scored fast and never run; no module imports one that imports it back)."""
import ast
import random
import time
from pathlib import Path

import pytest

from tasks import Task, TaskError
from tasks_d1 import D1_TASKS
from tasks_tiny import TINY_TASKS
from tokenizer import EOS, EOT

ROOT = Path(__file__).resolve().parent.parent
D1_ITEMS = {"gsm8k": {"question": "Ann has 2 pens and buys 3. How many?", "answer": "5"},
            "math500": {"question": "?", "answer": "7"},
            "countdown": {"numbers": [49, 55, 53], "target": 51},
            "sudoku": {"puzzle": "1204340021034021", "solution": "1234341221434321"}}


def _every_task():
    """(label, task, one example) for every task of both families."""
    for name, task in D1_TASKS.items():
        yield f"d1 {name}", task, D1_ITEMS[name]
    for name, task in TINY_TASKS.items():
        yield f"tiny {name}", task, task.examples("test", 1)[0]


EVERY_TASK = list(_every_task())


@pytest.mark.parametrize("label, task, example", EVERY_TASK, ids=[t[0] for t in EVERY_TASK])
def test_every_task_has_the_same_interface(label, task, example):
    assert isinstance(task, Task) and task.name and isinstance(task.eval_prefix, str)
    for prompt in (task.rl_prompt(example), task.eval_prompt(example)):
        assert isinstance(prompt, str) and prompt and EOT not in prompt
    completions = ["", "nonsense", task.eval_prefix + "</reasoning>\n<answer>5</answer>" + EOT + EOS,
                   "<reasoning>\n1\n</reasoning>\n<answer>\n1234341221434321\n</answer>\n"]
    for completion in completions:
        rewards = task.rewards(completion, example)
        assert rewards and all(isinstance(k, str) and type(v) is float for k, v in rewards.items())
        correct = task.correct(completion, example)
        assert type(correct) is float and 0.0 <= correct <= 1.0
        assert isinstance(task.format_ok(completion), bool)


def test_format_ok_is_shared():
    for _, task, _ in EVERY_TASK:
        assert type(task).format_ok is Task.format_ok
        assert task.format_ok(" <reasoning>a\nb</reasoning>\n<answer>5</answer>\n" + EOT + "<answer>")
        assert not task.format_ok("<reasoning>a</reasoning><answer>5</answer>")  # the newline is required
        assert not task.format_ok("<reasoning></reasoning>\n<answer>5</answer><answer>5</answer>")


def test_the_base_class_asks_for_overrides():
    task = Task()
    for call in (lambda: task.rl_prompt({}), lambda: task.eval_prompt({}), lambda: task.rewards("", {}),
                 lambda: task.correct("", {})):
        with pytest.raises(NotImplementedError):
            call()
    assert issubclass(TaskError, ValueError)


# ----------------------------------------------------------------------------- hostile output

ALPHABET = ["<answer>", "</answer>", "```", " ", "\n", "1", "23", "<|eot_id|>", "<|endoftext|>",
            "<reasoning>", "</reasoning>", "\\boxed{", "}", "=", "+", "x", "0123456789012345", "\t"]
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


def _all_checks():
    for label, task, example in EVERY_TASK:
        yield f"{label}.rewards", lambda t, task=task, ex=example: task.rewards(t, ex)
        yield f"{label}.correct", lambda t, task=task, ex=example: task.correct(t, ex)
        yield f"{label}.format_ok", task.format_ok
    for name, task in D1_TASKS.items():
        yield f"d1 {name}.correct_counts", lambda t, task=task, ex=D1_ITEMS[name]: task.correct_counts(t, ex)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_output_is_scored_fast_and_never_run(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for label, check in _all_checks():
        start = time.perf_counter()
        check(HOSTILE[kind])
        assert time.perf_counter() - start < 1.0, f"{label} on {kind}"
    assert not (tmp_path / "PWNED").exists()


def test_no_eval_or_exec_in_the_code():
    for file in ("scoring.py", "tasks.py", "tasks_d1.py", "data_d1.py", "tasks_tiny.py", "eval.py"):
        for node in ast.walk(ast.parse((ROOT / file).read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile", "__import__"), file


# ----------------------------------------------------------------------------- module structure

def _project_imports() -> dict[str, set]:
    """{module: the project's modules it imports}, every import counted (inside functions too)."""
    modules = {path.stem: path for path in ROOT.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        graph[name] = found & set(modules) - {name}
    return graph


def test_no_import_cycles():
    graph = _project_imports()
    assert graph["tokenizer"] == set() and graph["tasks"] <= {"scoring", "tokenizer"}
    assert graph["tasks_tiny"] <= {"tasks", "scoring", "tokenizer"}
    assert graph["tasks_d1"] <= {"tasks", "scoring", "tokenizer", "data_d1"}

    def reaches(start, target, seen):
        # depth-first walk over the imports, each module visited once
        for dep in graph[start] - seen:
            seen.add(dep)
            if dep == target or reaches(dep, target, seen):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert not cycles, f"modules that import themselves through others: {cycles}"
