"""
Chat with a LLaDA model and watch the answer being denoised, token by token.

    python sample.py --model=checkpoints/tiny-sft.pt --prompt="What is 2+3?"        # a project checkpoint
    python sample.py --model=LLaDA-8B-Instruct --prompt="Write a haiku" --device=cuda   # an official folder
    python sample.py --model=out/ckpt.pt --prompt="hi" --gen_length=64 --steps=64 --temperature=0.5

--model is a Hugging Face-format LLaDA directory (config.json, safetensors, tokenizer.json) or a
project .pt checkpoint (the tiny byte tokenizer); see checkpoint.load_any. The prompt goes through
LLaDA's chat template. The sampler flags and their defaults are those of the reference chat script
(llada.md section 5): gen_length 128, steps 128, block_length 32, temperature 0 (greedy), cfg_scale 0,
remasking low_confidence. While it runs, the answer is shown filling in: ░ is a still-masked
position, · an end-of-text token (answers are padded with them up to gen_length):

    [step   16/128] The answer is 5.░░░░░░░░·····░░░░░░░░░░░░░░░░░░░░░░░...

On a terminal the answer is redrawn in place every step; otherwise (a pipe, a log) a line is
printed every steps/8 steps. Then the final answer is printed, cut at the first end token.
"""

import argparse
import math
import shutil
import sys

import torch

from checkpoint import load_any
from diffusion import generate
from train import pick_device

MASK_SHOWN = "░"  # a position still masked
END_SHOWN = "·"  # <|endoftext|> or <|eot_id|>: the answer has ended here


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Chat with a LLaDA model, showing the denoising.")
    p.add_argument("--model", required=True, help="LLaDA directory (Hugging Face format) or project .pt")
    p.add_argument("--prompt", required=True, help="the user message (the chat template is added)")
    p.add_argument("--gen_length", type=int, default=128, help="answer length in tokens")
    p.add_argument("--steps", type=int, default=128, help="denoising steps in all (a multiple of the blocks)")
    p.add_argument("--block_length", type=int, default=32, help="tokens per semi-autoregressive block")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; >0: Gumbel sampling")
    p.add_argument("--cfg_scale", type=float, default=0.0, help="classifier-free guidance (0: off)")
    p.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto keeps the checkpoint's (bf16 for LLaDA-8B, fp32 for a project .pt)")
    p.add_argument("--seed", type=int, default=0, help="for temperature > 0 or random remasking")
    return p.parse_args(argv)


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


def final_answer(ids, tok):
    """The answer up to (not including) its first <|endoftext|> or <|eot_id|>."""
    ends = [k for k, i in enumerate(ids) if i in (tok.eos_id, tok.eot_id)]
    return render(ids[:ends[0]] if ends else ids, tok)


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
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    try:
        model, tok = load_any(args.model, device, None if args.dtype == "auto" else args.dtype)
    except (ValueError, OSError, ImportError) as e:  # CheckpointError is a ValueError
        raise SystemExit(f"sample.py: cannot load {args.model}: {e}") from None
    model.eval()
    prompt = torch.tensor([tok.chat(args.prompt)], device=device)  # (1, P)
    P = prompt.size(1)
    dtype = next(model.parameters()).dtype
    print(f"{args.model}: {model.num_params() / 1e6:.1f}M parameters, {dtype}, {device}; "
          f"prompt {P} tokens, answer {args.gen_length} tokens in {args.steps} steps")
    try:
        out = generate(model, prompt, steps=args.steps, gen_length=args.gen_length,
                       block_length=args.block_length, temperature=args.temperature,
                       cfg_scale=args.cfg_scale, remasking=args.remasking,
                       on_step=show_progress(tok, P, args.steps))
    except ValueError as e:  # a prompt past the model's context, gen_length not a multiple of blocks, ...
        raise SystemExit(f"sample.py: {e} (the chat-templated prompt is {P} tokens, "
                         f"gen_length {args.gen_length})") from None
    print("\n" + final_answer(out[0, P:].tolist(), tok))


if __name__ == "__main__":
    main()
