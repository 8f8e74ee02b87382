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

--trace_drills=0.25 drills a quarter of each batch's SFT rows the way the sampler meets them: the
trace is cut at a random step (after an "=", a comma, a line or a tag), everything before the cut
stays clean and everything from it to the end of the row is masked (diffusion_loss's drill rows,
scored at full noise):

    P P P P P  <reasoning>5-2=3\n3+6=  M M M M M M M M M M M M M M M M    cut after "3+6="
                                    |-- masked: "9</reasoning>..." and the padding --|

so each step's result is learned with its question and the steps before it in view, as the
semi-autoregressive sampler writes it. Under random masking a result is almost never seen that
way (README, "Moving the table", items 2 and 9). --drill_share=0.25 adds pretraining's packed
arithmetic drills as a quarter of each batch's rows. step_accuracy, printed at the end of a run,
measures the step results a model gets right, with the steps before them in view, with only the
result masked, and with its copies masked too (item 22). Arith's traces write each result once
("5-2=3\n+6=9"); --arith_restate=true starts each line with the result above it, as the pretraining
corpus does: a copy that masked training can fill without computing anything (items 22-23).

The defaults make the shipped tiny-sft.pt (README, "Moving the table", items 24-25): both drills
at a quarter, each Arith result once, and 4,500 steps, so that each of the three tasks' traces gets
as many passes as Arith alone needed to learn its steps.

This file builds the examples and the batches; the loop is pretraining's (pretrain.denoising_loop),
which SFT shares: the two stages differ only in their batches.
"""

import random
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm import tqdm

from checkpoint import load_tokenizer
from common import ConfigError, FinetuneConfig, autocast, check_choice, check_range, init_model, mix_seed, start_run
from data_d1 import s1k_examples
from distributed import check_split, is_main
from pretrain import add_drill_rows, denoising_loop
from tasks_tiny import BACKTRACK, TinyArith, get_tiny_tasks
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
        "trace_drills": 0.0, "drill_share": 0.0,  # the tiny recipe's drills: d1 trains on s1K's rows alone
    }


@dataclass
class SFTConfig(FinetuneConfig):
    """d1's masked SFT on ~1,000 tiny-task reasoning traces (s1K has 1,000 questions)."""

    out_dir: str = "out/sft"  # ckpt.pt and metrics.jsonl go here
    steps: int = 4500  # tiny: 54 epochs of ~1,000 examples at 12 SFT rows a step (d1: 20 epochs of s1K, 2,460 steps)
    batch_size: int = 16  # rows per step (d1: effective batch 8, on 4k-token rows)
    lr: float = 5e-4  # tiny, full fine-tuning (d1: 1e-5 with LoRA on 8B)
    n_per_task: int = 334  # ~1,000 examples in all, like s1K
    backtrack: float = BACKTRACK  # share of traces that try, check and backtrack, as s1K's do (default 0: clean)
    seq_len: int = 160  # prompt + response + EOS padding (d1 pads to 4,096); = the pretraining rows
    sample_every: int = 500  # decode a few samples every N steps (0 = never)
    ckpt_every: int = 500  # write out_dir/ckpt.pt every N steps (and at the end)
    holdout: int = 0  # --data: leave out the last N rows (d1 holds out 10 of s1K's 1,000)
    long_rows: str = "error"  # a row longer than seq_len: error, cut (keep its first seq_len tokens) or drop
    trace_drills: float = 0.25  # share of each batch's SFT rows cut at a random step, the rest masked; 0 = none
    drill_share: float = 0.25  # share of each batch's rows that pack arithmetic drills, as pretraining's; 0 = none
    arith_restate: bool = False  # True: Arith traces start each line with the result above ("3+4=7\n7-2=5")

    PRESETS: ClassVar[dict] = {"d1": d1_sft_preset}

    def __post_init__(self):
        super().__post_init__()
        check_range(self, 1, None, "batch_size", "n_per_task")
        check_range(self, 2, None, "seq_len")
        check_range(self, 0, None, "holdout")
        check_range(self, 0, 1, "backtrack", "trace_drills", "drill_share")
        check_split(self.batch_size, "rows per step (--batch_size)")  # under torchrun: over its processes
        check_choice("long_rows", self.long_rows, ("error", "cut", "drop"))
        if round(self.drill_share * self.batch_size) >= self.batch_size:
            raise ConfigError(f"--drill_share={self.drill_share} leaves none of the {self.batch_size} rows per "
                              f"step (--batch_size) for SFT's own examples")


def sft_tasks(cfg: SFTConfig) -> list:
    """The tiny tasks of --tasks, Arith's traces in the form --arith_restate asks for (README, "Moving
    the table", item 23: without the restated copy, and with the drills, the model learns the steps)."""
    tasks = get_tiny_tasks(cfg.tasks)
    return [TinyArith(restate=False) if task.name == "arith" and not cfg.arith_restate else task for task in tasks]


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


STEP_ENDS = ("=", ",", "\n", ">")  # a trace's step ends with one of these: a cut may follow it


def step_end_tokens(tok):
    """(V,) bool: which token ids end with a step end (STEP_ENDS), e.g. "=" or ">\n"."""
    return torch.tensor([tok.decode([i]).endswith(STEP_ENDS) for i in range(tok.n_vocab)])


def trace_drills(x0, prompt_lengths, step_ends, eot_id, n_rows, generator):
    """The drill rows of a batch: its last n_rows rows, each cut at a random step of its response.

    x0: (B, T) rows of prompt, response, <|eot_id|>, EOS padding; step_ends: (V,) bool from
    step_end_tokens. A row's cut is drawn uniformly from the start of its response and every
    position of the response right after a step-ending token; returns answers (B, T) bool: True
    from the cut to the end of the row, in the drill rows only (diffusion_loss's `answers`).
        tokens   P P P  5 - 2 =  3 \n  3 + 6 =  9 <eot> E E
        cuts            ^        ^      ^        ^              (one of these, uniformly)"""
    B, T = x0.shape
    positions = torch.arange(T)  # (T,)
    after_step_end = torch.zeros_like(x0, dtype=torch.bool)  # (B, T)
    after_step_end[:, 1:] = step_ends[x0[:, :-1]]
    is_eot = (x0 == eot_id) & (positions >= prompt_lengths[:, None])  # (B, T) (the prompt has its own)
    eot_at = torch.where(is_eot.any(dim=1), is_eot.int().argmax(dim=1), T - 1)  # (B,) a cut row: its end
    in_response = (positions >= prompt_lengths[:, None]) & (positions <= eot_at[:, None])  # (B, T)
    cuts = in_response & (after_step_end | (positions == prompt_lengths[:, None]))  # (B, T)
    scores = torch.rand(B, T, generator=generator).masked_fill(~cuts, -1.0)  # (B, T)
    cut_at = scores.argmax(dim=1)  # (B,) a uniform choice among each row's cuts
    answers = positions >= cut_at[:, None]  # (B, T)
    answers[:B - n_rows] = False  # only the last n_rows rows are drills
    return answers


def sft_step_batch(step, cfg, tok, ids, prompt_lengths, step_ends=None):
    """The batch of an optimizer step, a pure function of (seed, step): SFT rows (sft_batch), the
    last --trace_drills share of them cut at a step (trace_drills), then --drill_share of the batch
    in rows of packed arithmetic drills, as pretraining's. Returns x0 (B, T), prompt lengths (B,)
    and the drill rows' answers (B, T) bool, or None without drills (diffusion_loss's `answers`)."""
    n_facts = round(cfg.drill_share * cfg.batch_size)
    x0, lengths = sft_batch(step, cfg.batch_size - n_facts, ids, prompt_lengths, cfg.seed)  # (b, T), (b,)
    n_traces = round(cfg.trace_drills * x0.size(0))
    if not n_traces and not n_facts:
        return x0, lengths, None
    answers = torch.zeros_like(x0, dtype=torch.bool)  # (b, T)
    if n_traces:
        cut_gen = torch.Generator().manual_seed(mix_seed(cfg.seed, step, 1))  # the cuts: a function of step
        answers = trace_drills(x0, lengths, step_ends, tok.eot_id, n_traces, cut_gen)
    if n_facts:  # (B, T), (B,), (B, T)
        x0, lengths, answers = add_drill_rows(x0, lengths, answers, n_facts, tok, seed=mix_seed(cfg.seed, step))
    return x0, lengths, answers


STEP_VIEWS = ("before", "result", "copies")


def step_probe_row(tok, ids, j, view):
    """The row in which step_accuracy reads the result at position j of a gold row ids (a list).

    view "before": the row up to the result clean, everything from it on masked (how the
    semi-autoregressive sampler meets a result). view "result": the whole row clean but the result.
    view "copies": the same, with the places the trace writes the result again masked too: a later
    equal token at the start of a line or just inside a tag (in Arith, the next line's first number
    and the answer). A model that fills results in the "result" view and not in the "copies" one
    copies them; one that fills them in both computes them.

        before   <reasoning>2+7=  M M M M M M M M M M M M M M M M M M M
        result   <reasoning>2+7=M\n9-3=6\n6+2=8</reasoning>\n<answer>8</answer>
        copies   <reasoning>2+7=M\nM-3=6\n6+2=8</reasoning>\n<answer>8</answer>"""
    if view == "before":
        return ids[:j] + [tok.mask_id] * (len(ids) - j)
    row = list(ids)
    row[j] = tok.mask_id
    if view == "copies":
        for k in range(j + 1, len(ids)):
            if ids[k] == ids[j] and tok.decode([ids[k - 1]]).endswith(("\n", ">")):  # a copy
                row[k] = tok.mask_id
    return row


def step_accuracy(model, tok, task, device, dtype, n=200, split="test", seq_len=160, view="before"):
    """The share of a task's step results the model fills in right: for each "=" of the gold
    traces of n questions, one greedy read of the token after it in the row step_probe_row builds
    for `view`. Returns None for a task without "=" (Sudoku).

        P P P  <reasoning>5-2=  M M M M ...     right if the model's top token here is "3"

    view "before" is how the semi-autoregressive sampler meets a result, and how --trace_drills
    trains it; "result" and "copies" ask whether the model copies a result or computes it (README,
    "Moving the table", item 22)."""
    check_choice("view", view, STEP_VIEWS)
    rows, at = [], []  # (R, T) masked rows, and (row, position) of each result
    for ex in task.examples(split, n):
        ids, P = encode_example(tok, task.rl_prompt(ex), task.sft_response(ex, random.Random(0), 0.0), seq_len)
        for j in range(P + 1, len(ids)):
            if tok.decode([ids[j - 1]]).endswith("="):
                rows.append(step_probe_row(tok, ids, j, view))
                at.append((j, ids[j]))
    if not rows:
        return None
    was_training = model.training
    model.eval()
    x = torch.tensor(rows, device=device)  # (R, T)
    with torch.no_grad(), autocast(device, dtype):
        guesses = torch.cat([model(x[i:i + 64]).argmax(-1) for i in range(0, len(x), 64)])  # (R, T)
    model.train(was_training)
    return sum(guesses[r, j].item() == gold for r, (j, gold) in enumerate(at)) / len(at)


def train_sft(cfg: SFTConfig):
    device = start_run(cfg, "sft")
    tok = load_tokenizer(cfg.init)  # the tiny tokenizer, or a LLaDA folder's tokenizer.json
    if cfg.data:  # d1: s1K's rows, from a local file
        examples = s1k_examples(cfg.data)
        if cfg.holdout >= len(examples):
            raise ConfigError(f"--holdout={cfg.holdout}: {cfg.data} has only {len(examples)} rows")
        examples = examples[:len(examples) - cfg.holdout]
    else:
        examples = sft_examples(sft_tasks(cfg), cfg.n_per_task, cfg.seed, cfg.backtrack)
    ids, prompt_lengths = encode_dataset(tok, examples, cfg.seq_len, cfg.long_rows)  # (N, T), (N,)
    model = init_model(cfg, device, tok, "sft")
    if cfg.seq_len > model.config.max_sequence_length:
        raise ConfigError(f"--seq_len={cfg.seq_len}: more than the model's context of "
                          f"{model.config.max_sequence_length} tokens ({cfg.init})")
    print(f"SFT set: {ids.size(0)} rows of {ids.size(1)} tokens; e.g. {str(examples[0])[:300]}")
    step_ends = step_end_tokens(tok) if cfg.trace_drills else None
    batch_at = lambda step: sft_step_batch(step, cfg, tok, ids, prompt_lengths, step_ends)  # noqa: E731
    model = denoising_loop(cfg, "sft", model, tok, device, batch_at)
    if not cfg.data:  # how many step results the traces taught (README, "Moving the table", 9)
        for task in sft_tasks(cfg):  # on every process: a sharded (--fsdp) forward needs them all
            before, result, copies = (step_accuracy(model, tok, task, device, cfg.dtype, seq_len=cfg.seq_len,
                                                    view=v) for v in STEP_VIEWS)
            if before is not None and is_main():
                print(f"{task.name}: test traces' step results right: {before:.1%} with the steps before in view, "
                      f"{result:.1%} with only the result masked, {copies:.1%} with its copies masked too")
    return model
