r"""
Stage 2, masked SFT: d1's supervised stage (d1 paper, Sec. 3.1), scaled down to the tiny tasks.

    python train.py --stage sft                        # from checkpoints/tiny-base.pt
    python train.py --stage sft --lora_r=8             # LoRA instead of full fine-tuning

d1 fine-tunes LLaDA on s1K (1,000 questions with long reasoning traces, some of which try, check
and backtrack). Our stand-in: about a thousand tiny-task questions with step-by-step traces
written by tasks_tiny.py, a share of them with self-correction. Each example becomes one row:

    chat_prompt(question)          response                                     EOS padding
    P P P P P P P P P P P P P P P  <reasoning>...</reasoning>\n<answer>..</answer><eot>  E E E E E E
    |---- never masked ----------|------------- masked and scored (1/p weighted) ----------------|

The loss (diffusion.diffusion_loss) noises only the response and the padding, and divides each
row's sum by its answer length (T - P). The EOS padding is scored too: that is how a diffusion
model, which writes every position of a fixed-length canvas, learns where its answer ends.

This file builds the examples and the batches; the loop is pretraining's (pretrain.denoising_loop),
which SFT shares: the two stages differ only in their batches.
"""

import random
from dataclasses import dataclass

import torch

from common import ConfigError, FinetuneConfig, check_range, init_model, mix_seed, start_run
from pretrain import denoising_loop
from tasks_tiny import get_tiny_tasks
from tokenizer import EOT, Tokenizer


@dataclass
class SFTConfig(FinetuneConfig):
    """d1's masked SFT on ~1,000 tiny-task reasoning traces (s1K has 1,000 questions)."""

    out_dir: str = "out/sft"  # ckpt.pt and metrics.jsonl go here
    steps: int = 1500  # tiny: 24 epochs of 1,000 examples at batch 16 (d1: 20 epochs of s1K, 2,460 steps)
    batch_size: int = 16  # rows per step (d1: effective batch 8, on 4k-token rows)
    lr: float = 5e-4  # tiny, full fine-tuning (d1: 1e-5 with LoRA on 8B)
    n_per_task: int = 334  # ~1,000 examples in all, like s1K
    seq_len: int = 160  # prompt + response + EOS padding (d1 pads to 4,096); = the pretraining rows
    sample_every: int = 500  # decode a few samples every N steps (0 = never)
    ckpt_every: int = 500  # write out_dir/ckpt.pt every N steps (and at the end)

    def __post_init__(self):
        super().__post_init__()
        check_range(self, 1, None, "batch_size", "n_per_task")
        check_range(self, 2, None, "seq_len")


def sft_examples(tasks, n_per_task, seed):
    """(question, response) pairs: n_per_task training questions of each task, one trace each.

    The traces come from task.sft_response, which writes a share of try-check-backtrack traces."""
    rng = random.Random(seed)
    examples = []
    for task in tasks:
        for ex in task.examples("train", n_per_task):
            examples.append((task.rl_prompt(ex), task.sft_response(ex, rng)))
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
        order.append(torch.randperm(N, generator=torch.Generator().manual_seed(mix_seed(seed, epoch))))
    order = torch.cat(order)[first % N: first % N + batch_size]  # (B,)
    return ids[order], prompt_lengths[order]


def train_sft(cfg: SFTConfig):
    device = start_run(cfg, "sft")
    tok = Tokenizer.tiny()
    examples = sft_examples(get_tiny_tasks(cfg.tasks), cfg.n_per_task, cfg.seed)
    ids, prompt_lengths = encode_dataset(tok, examples, cfg.seq_len)  # (N, T), (N,)
    model = init_model(cfg, device)
    if cfg.seq_len > model.config.max_sequence_length:
        raise ConfigError(f"--seq_len={cfg.seq_len}: more than the model's context of "
                          f"{model.config.max_sequence_length} tokens ({cfg.init})")
    print(f"SFT set: {len(examples)} examples, {ids.size(1)} tokens per row; e.g. {examples[0]}")
    batch_at = lambda step: sft_batch(step, cfg.batch_size, ids, prompt_lengths, cfg.seed)  # noqa: E731
    return denoising_loop(cfg, "sft", model, tok, device, batch_at)
