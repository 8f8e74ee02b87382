"""
Masked SFT data: d1's supervised stage, scaled down to the tiny tasks.

    python train.py --stage sft                        # from checkpoints/tiny-base.pt, ~minutes on CPU
    python train.py --stage sft --lora_r=8             # LoRA instead of full fine-tuning

d1 fine-tunes LLaDA on s1K (1,000 questions with long reasoning traces, some of which try, check
and backtrack). Our stand-in: about a thousand tiny-task questions with step-by-step traces
written by tasks.py, a share of them with self-correction. Each example becomes one row:

    chat_prompt(question)          response                                     EOS padding
    P P P P P P P P P P P P P P P  <reasoning>...</reasoning>\\n<answer>..</answer><eot>  E E E E E E
    |---- never masked ----------|------------- masked and scored (1/t weighted) ----------------|

The loss (diffusion.sft_loss) noises only the response and the padding, and divides each row's
sum by its answer length (T - P). The EOS padding is scored too: that is how a diffusion model,
which writes every position of a fixed-length canvas, learns where its answer ends.

This file builds the examples and the batches; the loop is train.py's (train_sft).
"""

import random

import torch

from tokenizer import EOT


def sft_examples(tasks, n_per_task, seed):
    """(question, response) pairs: n_per_task training questions of each task, one trace each.

    The traces come from task.sft_response, which writes a share of try-check-backtrack traces."""
    rng = random.Random(seed)
    examples = []
    for task in tasks:
        for ex in task.examples("train", n_per_task):
            examples.append((ex.prompt, task.sft_response(ex, rng)))
    return examples


def encode_example(tok, question, response, seq_len):
    """One row: chat-templated question, response, <|eot_id|>, then EOS up to seq_len tokens.

    Returns (ids, prompt_length). A row that does not fit is an error, never silently cut: a cut
    answer would teach the model to stop mid-sentence."""
    prompt = tok.chat(question)
    answer = tok.encode(response + EOT)
    if len(prompt) + len(answer) > seq_len:
        raise ValueError(f"SFT example of {len(prompt)} + {len(answer)} tokens does not fit seq_len={seq_len}: "
                         f"{question!r} -> {response[:60]!r}...")
    padding = [tok.eos_id] * (seq_len - len(prompt) - len(answer))
    return prompt + answer + padding, len(prompt)


def encode_dataset(tok, examples, seq_len):
    """All examples as tensors: ids (N, T) and prompt lengths (N,)."""
    rows = [encode_example(tok, q, r, seq_len) for q, r in examples]
    return torch.tensor([ids for ids, _ in rows]), torch.tensor([p for _, p in rows])


def sft_batch(step, batch_size, ids, prompt_lengths, seed):
    """The batch of an optimizer step: epochs of a seeded shuffle, a pure function of step
    (so --resume needs no data state). Returns ids (B, T) and prompt lengths (B,)."""
    N = ids.size(0)
    first = step * batch_size
    order = []
    for epoch in range(first // N, (first + batch_size - 1) // N + 1):
        order.append(torch.randperm(N, generator=torch.Generator().manual_seed(seed + epoch)))
    order = torch.cat(order)[first % N: first % N + batch_size]  # (B,)
    return ids[order], prompt_lengths[order]
