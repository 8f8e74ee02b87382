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
"""

import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from checkpoint import load_any
from common import ConfigError, check_choice, check_range, cli, one_line_errors, pick_device
from diffusion import REMASKING, check_sampler, generate
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

    def __post_init__(self):
        if not self.model:
            raise ConfigError("--model is required: a LLaDA folder or a project .pt checkpoint")
        if not Path(self.model).exists():
            raise ConfigError(f"--model={self.model}: no such file or folder")
        if not self.prompt.strip():
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


def main(argv=None):
    with one_line_errors("sample.py"):
        cfg = cli(SampleConfig, sys.argv[1:] if argv is None else argv)
        device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        model, tok = load_any(cfg.model, device, None if cfg.dtype == "auto" else cfg.dtype)
        model.eval()
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
