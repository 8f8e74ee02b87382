r"""
Chat with a LLaDA model and watch the answer being denoised, token by token.

    python sample.py --model=checkpoints/tiny-sft.pt --prompt="What is 2+3?"        # a project checkpoint
    python sample.py --model=LLaDA-8B-Instruct --prompt="Write a haiku" --device=cuda   # an official folder
    python sample.py --model=out/ckpt.pt --prompt="hi" --gen_length=64 --steps=64 --temperature=0.5

--model is a Hugging Face-format LLaDA directory (config.json, safetensors, tokenizer.json) or a
project .pt checkpoint (the tiny tokenizer); see checkpoint.load_any. The prompt goes through
LLaDA's chat template (a typed \n in --prompt is a newline). The sampler keys and their defaults are
those of LLaDA's released chat script: gen_length 128, steps 128, block_length 32, temperature 0
(greedy), cfg_scale 0, remasking low_confidence; `python sample.py --help` lists them all. While it runs, the answer is shown filling in: ░ is a still-masked
position, · an end-of-text token (answers are padded with them up to gen_length):

    [step   16/128] The answer is 5.░░░░░░░░·····░░░░░░░░░░░░░░░░░░░░░░░...

On a terminal the answer is redrawn in place every step; otherwise (a pipe, a log) a line is
printed every steps/8 steps. Then the final answer is printed, cut at the first end token.

--order=TASK counts what the display shows on one answer, over many: greedy answers to --n test
questions of a tiny task (its evaluation prompt, one batch), and how many of them had their answer
unmasked before their reasoning was finished (answer_order; README, "Moving the table", item 20),
with the evaluation's accuracy and the answers given most often, each with how many of its uses
are right (item 21):

    python sample.py --model=checkpoints/tiny-sft.pt --order=arith --gen_length=96 --steps=48
    python sample.py --model=checkpoints/tiny-sft.pt --order=arith --gen_length=96 --steps=96 --block_length=1
"""

import math
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from checkpoint import load_any
from common import ConfigError, check_choice, check_range, cli, one_line_errors, pick_device
from diffusion import REMASKING, check_sampler, generate
from eval import complete
from tasks_tiny import TINY_TASKS
from tokenizer import end_of_turn

MASK_SHOWN = "░"  # a position still masked
END_SHOWN = "·"  # <|endoftext|> or <|eot_id|>: the answer has ended here


@dataclass
class SampleConfig:
    """Chat with a LLaDA model, showing the denoising."""

    model: str = ""  # a LLaDA folder (Hugging Face format) or a project .pt checkpoint
    prompt: str = ""  # the user message (the chat template is added); write \n for a newline
    gen_length: int = 128  # answer length in tokens
    steps: int = 128  # denoising steps in all (a multiple of the number of blocks)
    block_length: int = 32  # tokens per semi-autoregressive block
    temperature: float = 0.0  # 0: greedy; > 0: Gumbel-max sampling
    cfg_scale: float = 0.0  # classifier-free guidance (0: off)
    remasking: str = "low_confidence"  # which tokens a step commits: low_confidence or random
    device: str = "auto"  # auto -> cuda, then mps, then cpu
    dtype: str = "auto"  # auto keeps the checkpoint's (bf16 for LLaDA-8B, fp32 for a project .pt)
    seed: int = 0  # for temperature > 0 or random remasking
    order: str = ""  # a tiny task: instead of --prompt, count answers written before their reasoning, and which
    n: int = 128  # --order: test questions

    def __post_init__(self):
        if not self.model:
            raise ConfigError("--model is required: a LLaDA folder or a project .pt checkpoint")
        if not Path(self.model).exists():
            raise ConfigError(f"--model={self.model}: no such file or folder")
        if self.order:
            check_choice("order", self.order, tuple(TINY_TASKS))
            check_range(self, 1, None, "n")
            if self.prompt:
                raise ConfigError("--order asks the task's own questions: leave out --prompt")
            if self.temperature or self.cfg_scale:
                raise ConfigError("--order decodes greedily, as the evaluation: leave out --temperature and --cfg_scale")
        elif not self.prompt.strip():
            raise ConfigError("--prompt is required and must not be blank")
        self.prompt = self.prompt.replace("\\n", "\n")  # a typed \n is a newline
        pick_device(self.device)
        check_choice("remasking", self.remasking, REMASKING)
        check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        check_range(self, 0, None, "temperature", "cfg_scale")
        check_sampler(self.gen_length, self.block_length, self.steps)


def render(ids, tok):
    """Answer ids as text: masks as ░, end tokens as ·, ids past the tokenizer's vocabulary as �
    (tok.decode does that: the embedding has padding rows, which an untrained model can pick).
    Each run of ordinary tokens is decoded as one byte string, since a character may span tokens."""
    placeholders = {tok.mask_id: MASK_SHOWN, tok.eos_id: END_SHOWN, tok.eot_id: END_SHOWN}
    shown, run = [], []
    for i in ids:
        if i in placeholders:
            shown += [tok.decode(run), placeholders[i]]
            run = []
        else:
            run.append(i)
    return "".join(shown) + tok.decode(run)


def show_progress(tok, P, steps, out=None):
    """An on_step callback for generate(): shows row 0's answer (positions P onwards) filling in."""
    out = out or sys.stdout  # looked up now, not at import: tests and notebooks replace sys.stdout
    tty = out.isatty()
    every = max(1, steps // 8)
    drawn_rows = 0

    def on_step(x, step):
        nonlocal drawn_rows
        text = render(x[0, P:].tolist(), tok)
        # A control character from the model (a stray ESC or CR) would garble the redraw: show it as �.
        text = "".join(c if c == "\n" or c.isprintable() else "\ufffd" for c in text)
        if tty:
            # Move the cursor up over the previous drawing, clear to the end of the screen, redraw.
            # Wrapped lines are counted with the terminal width (wide CJK characters approximately).
            width = shutil.get_terminal_size().columns
            frame = f"step {step}/{steps}\n{text}"
            up = f"\x1b[{drawn_rows}F" if drawn_rows else ""
            out.write(f"{up}\r\x1b[J{frame}\n")
            drawn_rows = sum(max(1, math.ceil(len(line) / width)) for line in frame.split("\n"))
        elif step % every == 0 or step == steps:
            out.write(f"[step {step:>4}/{steps}] {text.replace(chr(10), '↵')}\n")  # one line per update
        out.flush()

    return on_step


# -----------------------------------------------------------------------------
# --order: is the answer written before the reasoning that should lead to it?


def answer_first(first_step, ids, answer_open):
    """first_step: the step at which each answer position was unmasked; ids: the answer's token ids;
    answer_open: the ids of "<answer>". True if the token after the first "<answer>" was unmasked
    at an earlier step than some token before it (the reasoning was not finished), False if not,
    None if the answer has no "<answer>"."""
    k = len(answer_open)
    for i in range(len(ids) - k):
        if ids[i:i + k] == answer_open:
            return first_step[i + k] < max(first_step[:i], default=-1)
    return None


def answer_order(model, tok, task, examples, gen_length, steps, block_length, remasking="low_confidence"):
    """Greedy answers to `examples` in one batch (the evaluation's prompts, left-padded), with the
    step that unmasks each position recorded. Returns (answers written first, answers with an
    "<answer>" tag, the sum of their scores (task.correct, the evaluation's measure), a Counter of
    the answers given (task.answer_of; None: no answer), a Counter of the score of each answer)."""
    first_step = torch.full((len(examples), gen_length), -1)  # (N, C) -1 while still masked

    def on_step(x, step):
        answers = x[:, -gen_length:].cpu()  # (N, C)
        first_step[(answers != tok.mask_id) & (first_step < 0)] = step

    done = complete(model, tok, [(task, ex) for ex in examples], gen_length, block_length, steps,
                    remasking=remasking, on_step=on_step)  # the evaluation's prompts, sampler and scores
    answer_open = tok.encode("<answer>")
    written_first, tagged, given, right = 0, 0, Counter(), Counter()
    for ids, steps_of, text, score in zip(done.completion_ids.tolist(), first_step.tolist(), done.texts,
                                          done.correct.tolist()):
        first = answer_first(steps_of, ids, answer_open)
        tagged += first is not None
        written_first += bool(first)
        answer = task.answer_of(text)
        given[answer] += 1
        right[answer] += score
    return written_first, tagged, done.correct.sum().item(), given, right


def print_answer_order(cfg, model, tok):
    """--order's one line: the answers written first, the evaluation's score of the same answers, how
    many different answers were given, and the commonest with how many of their uses are right."""
    task = TINY_TASKS[cfg.order]
    first, tagged, score, given, right = answer_order(model, tok, task, task.examples("test", cfg.n),
                                                      cfg.gen_length, cfg.steps, cfg.block_length, cfg.remasking)
    print(f"{task.name}, gen {cfg.gen_length}, block {cfg.block_length}, {cfg.steps} steps, {cfg.n} test questions: "
          f"answer written before its reasoning ends in {first} of the {tagged} answers with an <answer> tag; "
          f"accuracy {100 * score / cfg.n:.1f}%; {len(given)} different answers, the commonest (right): "
          + ", ".join(f"{answer!r} x{count} ({right[answer]:g})" for answer, count in given.most_common(4)))


# -----------------------------------------------------------------------------


def main(argv=None):
    with one_line_errors("sample.py"):
        cfg = cli(SampleConfig, sys.argv[1:] if argv is None else argv)
        device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        model, tok = load_any(cfg.model, device, None if cfg.dtype == "auto" else cfg.dtype)
        model.eval()
        if cfg.order:
            return print_answer_order(cfg, model, tok)
        prompt = torch.tensor([tok.chat(cfg.prompt)], device=device)  # (1, P)
        P = prompt.size(1)
        if P + cfg.gen_length > model.config.max_sequence_length:
            raise ConfigError(f"the chat-templated prompt is {P} tokens and gen_length {cfg.gen_length}: "
                              f"{P + cfg.gen_length} exceeds the model's context of "
                              f"{model.config.max_sequence_length} tokens")
        dtype = next(model.parameters()).dtype
        print(f"{cfg.model}: {model.num_params() / 1e6:.1f}M parameters, {dtype}, {device}; "
              f"prompt {P} tokens, answer {cfg.gen_length} tokens in {cfg.steps} steps")
        out = generate(model, prompt, steps=cfg.steps, gen_length=cfg.gen_length, block_length=cfg.block_length,
                       temperature=cfg.temperature, cfg_scale=cfg.cfg_scale, remasking=cfg.remasking,
                       on_step=show_progress(tok, P, cfg.steps))
        print("\n" + end_of_turn(tok.decode(out[0, P:])))


if __name__ == "__main__":
    main()
