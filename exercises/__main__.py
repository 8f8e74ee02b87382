"""
The exercises' command line.

    python -m exercises                                   # list the exercises and which pass
    python -m exercises check 04                          # check exercises/04_forward_process.py
    python -m exercises check 04 --solution               # the same check on the project's code
    python -m exercises run 12 --stage grpo --steps=5     # train with your grpo_loss (train.py keys)
    python -m exercises run 12 --force --stage grpo       # ... even if its check fails

`run` first checks the exercise, then puts the student's objects in place of the project's in every
project module that holds them (e.g. diffusion_loss lives in diffusion.py and is imported by name
into pretrain.py: both are replaced), then calls train.main with the remaining arguments.
Exit code: 0 when the check (or the run) passes, 1 otherwise.
"""

import importlib
import sys
from pathlib import Path

from . import EXERCISES, EXPERIMENTS, check, get, names_of
from .check import Fail

ROOT = Path(__file__).resolve().parent.parent
USAGE = ("usage: python -m exercises [check NN [--solution] | run NN [--force] --stage STAGE [--key=value ...]]\n"
         "       python -m exercises.<experiment> [--key=value ...]")


def list_exercises():
    """One line per exercise: number, file, what it replaces, minutes, `run` stages, whether it passes."""
    print(f"{'NN':<3} {'file':<33} {'replaces':<45} {'min':>3}  {'run --stage':<19} status")
    passed = 0
    for exercise in EXERCISES:
        result = check(exercise.number)
        passed += result.passed
        status = "passed" if result.passed else "not implemented yet" if "not implemented yet" in result.message \
            else "failing"
        print(f"{exercise.number:02d}  exercises/{exercise.path.name:<23} {', '.join(exercise.targets):<45} "
              f"{exercise.minutes:>3}  {'/'.join(exercise.stages) or '-':<19} {status}")
    print(f"\n{passed} of {len(EXERCISES)} pass. Check one: python -m exercises check NN; train with it: "
          "python -m exercises run NN --stage STAGE [train.py keys]")
    print("Experiments:")
    for name, question in EXPERIMENTS.items():
        print(f"  python -m exercises.{name:<24} {question}")
    return 0


def check_command(args):
    if not args or len(args) > 2 or (len(args) == 2 and args[1] != "--solution"):
        raise SystemExit(USAGE)
    result = check(args[0], solution="--solution" in args)
    print(result.message)
    return 0 if result.passed else 1


def plug(exercise, names):
    """Replace the project's objects by the student's wherever a project module holds them.
    Returns [(module, attribute, original)]: unplug(that) puts the originals back."""
    pairs = [(target, getattr(names, target.split(".")[1])) for target in exercise.targets]
    pairs += [(target, getattr(names, exercise.names[0])) for target in exercise.also]  # sdpa <- your attention
    replaced = []
    for target, new in pairs:
        module_name, name = target.split(".")
        original = getattr(importlib.import_module(module_name), name)
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None) or ""
            if Path(path).parent != ROOT:
                continue  # project modules only: the files at the repository's top level
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, new)
                    replaced.append((module, attr, original))
    return replaced


def unplug(replaced):
    for module, attr, original in replaced:
        setattr(module, attr, original)


def run_command(args):
    force = "--force" in args
    args = [a for a in args if a != "--force"]
    if not args or not args[1:2] or not args[1].startswith("--stage"):
        raise SystemExit(USAGE)
    exercise = get(args[0])
    stage = args[1].split("=", 1)[1] if "=" in args[1] else (args[2] if len(args) > 2 else "")
    rest = args[2:] if "=" in args[1] else args[3:]
    given = [a.split("=")[0] for a in rest]
    rest += [key for key in exercise.run_defaults.get(stage, ()) if key.split("=")[0] not in given]
    if not exercise.stages:
        raise SystemExit(f"{exercise.label} does not plug into training: the top of exercises/{exercise.path.name} "
                         "says why")
    if stage not in exercise.stages:
        raise SystemExit(f"{exercise.label} plugs into --stage {' or '.join(exercise.stages)}, not {stage!r}")
    result = check(exercise.number)
    print(result.message.splitlines()[0] if result.passed else result.message)
    if not result.passed and not force:
        print("fix it first (or add --force to watch what it does to training)")
        return 1
    import train  # imports every stage, so every module that holds a replaced name is loaded

    try:
        replaced = plug(exercise, names_of(exercise))
    except Fail as e:  # --force with a file that does not even load
        raise SystemExit(str(e)) from None
    print(f"training with YOUR {', '.join(exercise.names)}: replaced "
          + ", ".join(f"{module.__name__}.{attr}" for module, attr, _ in replaced))
    try:
        train.main(["--stage", stage, *rest])
    finally:
        unplug(replaced)
    return 0


def main(argv):
    if not argv:
        return list_exercises()
    commands = {"check": check_command, "run": run_command}
    if argv[0] not in commands:
        raise SystemExit(USAGE)
    try:
        return commands[argv[0]](argv[1:])
    except KeyError as e:  # an unknown exercise number
        raise SystemExit(f"python -m exercises: {e.args[0]}") from None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
