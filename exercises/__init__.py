"""
Classroom exercises: rewrite the core of d1 one function at a time, and let the project tell you
when you are right. Each exercises/NN_name.py holds stubs with exactly the names and signatures of
the project's functions (each raises NotImplementedError, and its docstring gives the maths, the
shapes, an example and a hint); the checks compare your code with the project's.

    python -m exercises                          # the exercises, in pipeline order, and which pass
    python -m exercises check 04                 # check exercises/04_forward_process.py
    python -m exercises check 04 --solution      # the same check on the project's own function
    python -m exercises run 12 --stage grpo --steps=5       # train with YOUR grpo_loss in place
    python -m exercises.experiment_remasking     # experiments: a question, measured on the CPU
    python -m exercises.experiment_prompt_mask

From Python (what the tests do):

    from exercises import check
    result = check(7, candidate=my_commit_plan)  # Result(passed, message); a dict {name: object}
    print(result.message)                        # for exercises with several names

This file is the registry: which project names each exercise replaces, how long it takes, what it
teaches, its check, and the train.py stages its code can be plugged into (`run`).
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Callable

from .check import Fail, Result, load_file, run_check
from .checks_countdown import check_countdown
from .checks_diffusion import (check_commit_plan, check_forward_process, check_gumbel, check_pretrain_loss,
                               check_sft_loss, check_top_k)
from .checks_grpo import check_advantages, check_grpo_loss, check_lora, check_one_step_logps
from .checks_model import check_attention, check_rmsnorm, check_rope

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Exercise:
    number: int
    name: str  # the file is exercises/NN_name.py
    targets: tuple  # the project names its stubs replace, "module.name"
    minutes: int  # about how long it takes a student
    teaches: str
    check: Callable  # check(namespace of the student's names); raises Fail or NotDone
    stages: tuple = ()  # train.py stages `python -m exercises run` can plug it into
    also: tuple = ()  # more project names the same code replaces when plugged in
    run_defaults: dict = field(default_factory=dict)  # {stage: train.py keys `run` adds when absent}

    @property
    def path(self):
        return HERE / f"{self.number:02d}_{self.name}.py"

    @property
    def names(self):
        return tuple(target.split(".")[1] for target in self.targets)

    @property
    def label(self):
        return f"exercise {self.number:02d} ({', '.join(self.names)})"

    def project(self):
        """{name: the project's own object} (the teacher's key)."""
        return {target.split(".")[1]: getattr(importlib.import_module(target.split(".")[0]), target.split(".")[1])
                for target in self.targets}


ALL = ("pretrain", "sft", "grpo")
EXERCISES = (
    Exercise(1, "rmsnorm", ("model.RMSNorm",), 10, "normalising by the root mean square, in float32", check_rmsnorm,
             ALL),
    Exercise(2, "rope", ("model.rope_tables", "model.apply_rope"), 20,
             "rotary positions: angles per frequency, rotating the two halves", check_rope, ALL),
    Exercise(3, "attention", ("model.eager_attention",), 15,
             "bidirectional softmax attention; padding masks keys, not queries", check_attention, ALL,
             also=("model.sdpa_attention",)),
    Exercise(4, "forward_process", ("diffusion.forward_process",), 10,
             "masking each token with a per-row probability p", check_forward_process, ("pretrain", "sft")),
    Exercise(5, "pretrain_loss", ("diffusion.diffusion_loss",), 15,
             "the 1/p-weighted masked CE over ALL B*T slots: an ELBO estimate", check_pretrain_loss),
    Exercise(6, "sft_loss", ("diffusion.diffusion_loss",), 15,
             "d1's masked SFT: clean prompt, scored EOS padding, per-answer-length normalisation",
             check_sft_loss, ("pretrain", "sft"),
             run_defaults={"sft": ("--trace_drills=0", "--drill_share=0")}),  # drill rows need `answers`
    Exercise(7, "commit_plan", ("diffusion.commit_plan",), 10,
             "how many tokens each sampler step commits", check_commit_plan, ALL),
    Exercise(8, "top_k", ("diffusion._top_k_per_row",), 15,
             "committing the k most confident masked tokens of each row", check_top_k, ALL),
    Exercise(9, "gumbel", ("diffusion.add_gumbel_noise",), 15,
             "sampling as an argmax (Gumbel-max) and why it runs in float64", check_gumbel, ("grpo",)),
    Exercise(10, "advantages", ("grpo.group_advantages",), 10,
             "group-relative advantages A_i = r_i - mean(r) (Algorithm 1, line 6)", check_advantages, ("grpo",)),
    Exercise(11, "one_step_logps", ("estimators.prompt_mask", "estimators.sequence_logps"), 25,
             "d1's one-step log-prob estimator and its random prompt mask (line 8)", check_one_step_logps, ("grpo",)),
    Exercise(12, "grpo_loss", ("grpo.grpo_loss",), 20,
             "the clipped surrogate plus beta * k3 KL, pooled over tokens (line 9)", check_grpo_loss, ("grpo",)),
    Exercise(13, "lora", ("lora.LoRALinear",), 20,
             "a low-rank update that starts at zero, switches off, and merges", check_lora, ("sft", "grpo"),
             run_defaults={"sft": ("--lora_r=8",), "grpo": ("--lora_r=8",)}),  # LoRA needs --lora_r > 0
    Exercise(14, "countdown", ("scoring.safe_eval", "scoring.countdown_correct"), 40,
             "scoring untrusted model output without eval: a small parser with bounds", check_countdown, ("grpo",)),
)
EXPERIMENTS = {
    "experiment_remasking": "how often are a group's rewards all equal, low-confidence vs random remasking?",
    "experiment_prompt_mask": "how much does the prompt mask rate p move the one-step log-probs?",
}


def get(number):
    """The Exercise numbered `number` (an int, or a string such as "04")."""
    for exercise in EXERCISES:
        if str(exercise.number) == str(number).lstrip("0"):
            return exercise
    raise KeyError(f"no exercise {number!r}: they are numbered {EXERCISES[0].number:02d} to {EXERCISES[-1].number:02d}")


def names_of(exercise, candidate=None, solution=False):
    """The namespace a check reads: the project's objects (solution), the student's file (no
    candidate), or a candidate: a module, a dict {name: object} (missing names are the project's),
    or one function or class (for an exercise with one name)."""
    project = exercise.project()
    if solution:
        return SimpleNamespace(**project)
    if candidate is None:
        candidate = load_file(exercise.path)
    if isinstance(candidate, ModuleType):
        return SimpleNamespace(**{name: getattr(candidate, name) for name in exercise.names})
    if isinstance(candidate, dict):
        return SimpleNamespace(**{**project, **candidate})
    if len(exercise.names) != 1:
        raise ValueError(f"{exercise.label} has several names: pass a dict {{name: object}}")
    return SimpleNamespace(**{exercise.names[0]: candidate})


def check(number, candidate=None, solution=False):
    """Check an exercise: the student's file, a candidate (see names_of), or the project's own code."""
    exercise = get(number)
    try:
        names = names_of(exercise, candidate, solution)
    except (Fail, AttributeError) as e:
        return Result(False, f"{exercise.label}: FAILED\n{e}")
    source = f"exercises/{exercise.path.name}" if candidate is None and not solution else None
    return run_check(exercise.check, names, exercise.label, source)
