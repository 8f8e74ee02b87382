"""
The Task interface: what every task family implements, so that SFT, diffu-GRPO and evaluation treat
d1's four benchmarks (tasks_d1.py) and the tiny generated classroom tasks (tasks_tiny.py) alike.

    from tokenizer import chat_prompt
    from tasks_tiny import TINY_TASKS               # or: from tasks_d1 import D1_TASKS
    task = TINY_TASKS["arith"]                      # D1_TASKS["gsm8k"] answers the same calls
    ex = task.examples("test", 1)[0]                # d1's tasks: items = task.load(path)
    prompt = chat_prompt(task.eval_prompt(ex)) + task.eval_prefix   # what the model continues
    completion = task.eval_prefix + answer          # answer: what the model wrote after the prompt
    task.correct(completion, ex)                    # the evaluation check, 0.0 .. 1.0
    sum(task.rewards(completion, ex).values())      # the RL reward (RL prompts: task.rl_prompt(ex))
"""
from scoring import last_answer
from tokenizer import end_of_turn

_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")


class TaskError(ValueError):
    """A task name that does not exist (or another unusable task setting)."""


class Task:
    r"""One task family's prompts, rewards and checks. Subclasses override everything that raises.

    An example is whatever the family uses for one problem (tasks_tiny.Example, or a dict for d1's
    tasks); only the task itself reads it. A completion is the assistant's text, starting with
    eval_prefix when that was prefilled; the end of the turn (<|eot_id|> or <|endoftext|>) and
    anything after it may be included.

        name                          the task's key in its registry ("countdown", "gsm8k", ...)
        eval_prefix                   text the evaluation prefills at the start of the assistant turn
        rl_prompt(example)            the user message for RL rollouts (no chat template)
        eval_prompt(example)          the user message for evaluation (no chat template)
        rewards(completion, example)  {reward name: value}; their sum is the RL reward
        correct(completion, example)  the evaluation check, 0.0 .. 1.0 (Sudoku: share of blanks right)
        format_ok(completion)         "<reasoning>...</reasoning>\n<answer>...</answer>", each tag once

    answer_of(completion) is a helper for the rewards and checks, not part of the interface.
    """
    name: str = ""
    eval_prefix: str = ""

    def rl_prompt(self, example) -> str:
        raise NotImplementedError

    def eval_prompt(self, example) -> str:
        raise NotImplementedError

    def rewards(self, completion: str, example) -> dict[str, float]:
        raise NotImplementedError

    def correct(self, completion: str, example) -> float:
        raise NotImplementedError

    def format_ok(self, completion: str) -> bool:
        r"""Exactly "<reasoning>...</reasoning>\n<answer>...</answer>", each tag once (blanks around
        the whole are allowed; the text after the end of the turn is ignored)."""
        text = end_of_turn(completion).strip()
        return (text.startswith("<reasoning>") and text.endswith("</answer>")
                and "</reasoning>\n<answer>" in text and all(text.count(t) == 1 for t in _TAGS))

    def answer_of(self, completion: str) -> str | None:
        """The content of the last <answer>...</answer> before the end of the turn, stripped."""
        answer = last_answer(end_of_turn(completion))
        return None if answer is None else answer.strip()
