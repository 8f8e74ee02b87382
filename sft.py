r"""
Stage 2, masked SFT: d1's supervised stage (d1 paper, Sec. 3.1), scaled down to the tiny tasks.

    python train.py --stage sft                        # from checkpoints/tiny-base.pt
    python train.py --stage sft --lora_r=8             # LoRA instead of full fine-tuning
    torchrun --nproc_per_node=8 train.py --stage sft --fsdp=true   # weights, grads, AdamW split 8 ways (FSDP)

d1 fine-tunes LLaDA on s1K (1,000 questions with long reasoning traces, some of which try, check
and backtrack). Our stand-in: about a thousand tiny-task questions with step-by-step traces
written by tasks_tiny.py, clean by default (--backtrack=0.3: a share with self-correction). Each
example becomes one row:

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
from typing import ClassVar

import torch
from tqdm import tqdm

from checkpoint import load_tokenizer
from common import ConfigError, FinetuneConfig, check_choice, check_range, init_model, mix_seed, start_run
from data_d1 import s1k_examples
from distributed import check_split, is_main
from pretrain import denoising_loop
from tasks_tiny import BACKTRACK, get_tiny_tasks
from tokenizer import EOT


def d1_sft_preset(given):
    """--preset=d1: d1's SFT run on s1K for LLaDA-8B-Instruct (d1 paper Sec. 3.1 and its appendix;
    d1's released SFT script, whose values the authors ran; the paper's text says LoRA r 8, alpha 16)."""
    return {
        "lora_r": 128, "lora_alpha": 256.0,  # d1's script (paper text: r 8, alpha 16)
        "lora_dropout": 0.05,  # d1's LoRA dropout
        "lora_targets": "q_proj,k_proj,v_proj",  # d1's SFT targets
        "lr": 1e-5,  # d1's script
        "weight_decay": 0.1,  # d1
        "grad_clip": 1.0,  # d1
        "seq_len": 4096,  # d1 pads every s1K row with EOS to 4,096 tokens
        "long_rows": "cut",  # s1K's longest traces exceed 4,096 tokens: keep their first 4,096
        "batch_size": 8,  # d1's effective batch (8 GPUs x 1 row)
        "micro_batch": 1,  # one 4,096-token row per forward/backward on one GPU (memory.py)
        "steps": 2460,  # d1: 20 epochs of 990 rows at batch 8
        "holdout": 10,  # d1 trains on 990 of s1K's 1,000 rows
        "checkpointing": True,  # needed on one GPU at 4,096 tokens (memory.py)
        "sample_every": 0,  # the tiny samples are not LLaDA-8B's kind of question
    }


@dataclass
class SFTConfig(FinetuneConfig):
    """d1's masked SFT on ~1,000 tiny-task reasoning traces (s1K has 1,000 questions)."""

    out_dir: str = "out/sft"  # ckpt.pt and metrics.jsonl go here
    steps: int = 1500  # tiny: 24 epochs of 1,000 examples at batch 16 (d1: 20 epochs of s1K, 2,460 steps)
    batch_size: int = 16  # rows per step (d1: effective batch 8, on 4k-token rows)
    lr: float = 5e-4  # tiny, full fine-tuning (d1: 1e-5 with LoRA on 8B)
    n_per_task: int = 334  # ~1,000 examples in all, like s1K
    backtrack: float = BACKTRACK  # share of traces that try, check and backtrack, as s1K's do (default 0: clean)
    seq_len: int = 160  # prompt + response + EOS padding (d1 pads to 4,096); = the pretraining rows
    sample_every: int = 500  # decode a few samples every N steps (0 = never)
    ckpt_every: int = 500  # write out_dir/ckpt.pt every N steps (and at the end)
    holdout: int = 0  # --data: leave out the last N rows (d1 holds out 10 of s1K's 1,000)
    long_rows: str = "error"  # a row longer than seq_len: error, cut (keep its first seq_len tokens) or drop

    PRESETS: ClassVar[dict] = {"d1": d1_sft_preset}

    def __post_init__(self):
        super().__post_init__()
        check_range(self, 1, None, "batch_size", "n_per_task")
        check_range(self, 2, None, "seq_len")
        check_range(self, 0, None, "holdout")
        check_range(self, 0, 1, "backtrack")
        check_split(self.batch_size, "rows per step (--batch_size)")  # under torchrun: over its processes
        check_choice("long_rows", self.long_rows, ("error", "cut", "drop"))


def sft_examples(tasks, n_per_task, seed, backtrack=BACKTRACK):
    """(question, response) pairs: n_per_task training questions of each task, one trace each.

    The traces come from task.sft_response; a `backtrack` share of them try, check and backtrack."""
    rng = random.Random(seed)
    examples = []
    for task in tasks:
        for ex in task.examples("train", n_per_task):
            examples.append((task.rl_prompt(ex), task.sft_response(ex, rng, backtrack)))
    return examples


def encode_example(tok, question, response, seq_len, long_rows="error"):
    """One row: chat-templated question, response, <|eot_id|>, then EOS up to seq_len tokens.

    Returns (ids, prompt_length), or None for a dropped row. A row that does not fit is an error
    unless long_rows says "cut" (keep the first seq_len tokens: that answer never stops, which
    teaches nothing about stopping) or "drop"; never silently."""
    prompt = tok.chat(question)
    answer = tok.encode(response + EOT)
    if len(prompt) + len(answer) > seq_len:
        if long_rows == "drop" or (long_rows == "cut" and len(prompt) >= seq_len):
            return None  # nothing of the answer would be left to learn from
        if long_rows == "error":
            raise ValueError(f"SFT example of {len(prompt)} + {len(answer)} tokens does not fit "
                             f"--seq_len={seq_len} (--long_rows=cut or drop allows it): "
                             f"{question[:60]!r} -> {response[:60]!r}...")
    padding = [tok.eos_id] * (seq_len - len(prompt) - len(answer))
    return (prompt + answer + padding)[:seq_len], len(prompt)


def encode_dataset(tok, examples, seq_len, long_rows="error"):
    """All examples as tensors: ids (N, T) and prompt lengths (N,). Says how many rows were cut or
    dropped (long_rows)."""
    bar = tqdm(examples, desc="tokenize", leave=False, disable=None if is_main() else True)  # None: if a terminal
    rows = [encode_example(tok, q, r, seq_len, long_rows) for q, r in bar]
    kept = [row for row in rows if row is not None]
    cut = sum(tok.eot_id not in ids for ids, _ in kept)  # a cut row lost its end of turn
    if len(kept) < len(rows) or cut:
        print(f"of {len(rows)} rows longer than --seq_len={seq_len} tokens: {cut} cut, "
              f"{len(rows) - len(kept)} dropped (--long_rows={long_rows})")
    if not kept:
        raise ValueError(f"no SFT row fits --seq_len={seq_len}")
    return torch.tensor([ids for ids, _ in kept]), torch.tensor([p for _, p in kept])


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
    tok = load_tokenizer(cfg.init)  # the tiny tokenizer, or a LLaDA folder's tokenizer.json
    if cfg.data:  # d1: s1K's rows, from a local file
        examples = s1k_examples(cfg.data)
        if cfg.holdout >= len(examples):
            raise ConfigError(f"--holdout={cfg.holdout}: {cfg.data} has only {len(examples)} rows")
        examples = examples[:len(examples) - cfg.holdout]
    else:
        examples = sft_examples(get_tiny_tasks(cfg.tasks), cfg.n_per_task, cfg.seed, cfg.backtrack)
    ids, prompt_lengths = encode_dataset(tok, examples, cfg.seq_len, cfg.long_rows)  # (N, T), (N,)
    model = init_model(cfg, device, tok, "sft")
    if cfg.seq_len > model.config.max_sequence_length:
        raise ConfigError(f"--seq_len={cfg.seq_len}: more than the model's context of "
                          f"{model.config.max_sequence_length} tokens ({cfg.init})")
    print(f"SFT set: {ids.size(0)} rows of {ids.size(1)} tokens; e.g. {str(examples[0])[:300]}")
    batch_at = lambda step: (*sft_batch(step, cfg.batch_size, ids, prompt_lengths, cfg.seed), None)  # noqa: E731
    return denoising_loop(cfg, "sft", model, tok, device, batch_at)
