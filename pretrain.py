"""
Stage 1, pretraining: a tiny LLaDA-style model learns the tiny tasks' text from scratch.

    python train.py --stage pretrain                          # 3,000 steps (README: time on a 2-core CPU)
    python train.py --stage pretrain --steps=200 --out_dir=out/quick      # a quick look
    python train.py --stage pretrain --resume                 # continue out_dir/ckpt.pt exactly
    torchrun --nproc_per_node=8 train.py --stage pretrain     # 8 GPUs, the same run (distributed.py)

The loss is LLaDA's masked-diffusion loss (diffusion.diffusion_loss; LLaDA paper, Sec. 2.1): mask
each token with a per-row probability p and score the masked ones with weight 1/p. The corpus
(tasks_tiny.pretrain_corpus) plays the role of LLaDA-8B-Instruct's pretraining and instruction
tuning in d1: background facts, worked problems, and chat-formatted questions with short answers
(--chat_reasoning=S: a share S of those answers, half by default, shows the task's reasoning trace
first, as LLaDA-8B-Instruct reasons before it answers; README, "Moving the table", item 17).

This file also holds the training loop that pretraining and SFT share (denoising_loop): the two
stages differ only in their batches. Outputs, in out_dir:
    ckpt.pt          model (official LLaDA key names), config, optimizer, step, RNG states
    metrics.jsonl    one JSON object per logged step (stage, step, loss, lr, seconds, ...)
"""

import itertools
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import distributed
from checkpoint import finish, restore, save_run
from common import (MetricsLog, RunConfig, autocast, check_choice, check_range, make_optimizer, mix_seed, row_slices,
                    set_lr, start_run)
from diffusion import diffusion_loss
from eval import complete
from model import Config, Model
from tasks_tiny import pretrain_corpus, pretrain_drills, sample_items
from tokenizer import END_HEADER, Tokenizer


@dataclass
class PretrainConfig(RunConfig):
    """Pretraining from scratch on the tiny tasks' text corpus (tasks_tiny.pretrain_corpus)."""

    out_dir: str = "out/pretrain"  # ckpt.pt and metrics.jsonl go here
    model: str = "tiny"  # a Config preset name (model.py)
    batch_size: int = 32  # rows per step
    seq_len: int = 160  # tokens per row: >= the longest prompt (32) + the longest generation (128)
    drill_share: float = 0.0  # share of rows that pack arithmetic drills, answers scored at full noise; 0 = none
    chat_reasoning: float = 0.5  # share of the corpus's chat answers that reason first (SFT's trace); 0 = none

    def __post_init__(self):
        super().__post_init__()
        check_choice("model", self.model, tuple(Config.PRESETS))
        check_range(self, 1, None, "batch_size")
        check_range(self, 2, Config.preset(self.model).max_sequence_length, "seq_len")
        check_range(self, 0, 1, "drill_share", "chat_reasoning")
        distributed.check_split(self.batch_size, "rows per step (--batch_size)")  # under torchrun: over its processes


def pack_rows(texts, tok, seq_len):
    """Turn documents into rows of exactly seq_len tokens: ids (B, seq_len) and prompt lengths (B,).

    Chat documents (chat_prompt(question) + answer) get a row of their own, padded with EOS as at
    generation time, and their prompt is kept clean by the loss (prompt length > 0): that is the
    instruction tuning of LLaDA-8B-Instruct, the model d1 starts from. Without it the model never
    sees a clean question above a fully masked answer, which is exactly what sampling shows it.
    Plain documents are packed together, separated by EOS, with prompt length 0."""
    rows, prompt_lengths, row = [], [], []
    for text in texts:
        question, header, answer = text.rpartition(END_HEADER + "\n\n")
        if header:  # a chat document: encode the prompt as the sampler will see it, then the answer
            prompt = tok.encode(question + header)
            rows.append((prompt + tok.encode(answer))[:seq_len])
            prompt_lengths.append(len(prompt))
            continue
        # a plain document: append it to the current row, or start a new row if it does not fit
        ids = tok.encode(text)[:seq_len]
        if row and len(row) + 1 + len(ids) > seq_len:
            rows.append(row)
            prompt_lengths.append(0)
            row = []
        row = row + [tok.eos_id] + ids if row else ids
    if row:
        rows.append(row)
        prompt_lengths.append(0)
    ids = torch.tensor([r + [tok.eos_id] * (seq_len - len(r)) for r in rows])
    return ids, torch.tensor(prompt_lengths)


def pack_drills(drills, tok, seq_len, n_rows):
    """n_rows rows of (question, answer) drills packed end to end, each followed by EOS: ids
    (n_rows, seq_len) and answers (n_rows, seq_len), True on each answer and its EOS.
        ids      7 + 8 = 1 5 E 3 - 1 = 2 E ...
        answers  . . . . x x x . . . . x x ...      (a drill that would not fit starts the next row)"""
    rows, answers, row, answer = [], [], [], []
    while len(rows) < n_rows:
        question, reply = next(drills)
        q, a = tok.encode(question), tok.encode(reply) + [tok.eos_id]
        if len(row) + len(q) + len(a) > seq_len:  # the row is full: pad it with clean EOS
            rows.append(row + [tok.eos_id] * (seq_len - len(row)))
            answers.append(answer + [False] * (seq_len - len(answer)))
            row, answer = [], []
        row, answer = row + q + a, answer + [False] * len(q) + [True] * len(a)
    return torch.tensor(rows), torch.tensor(answers)


def pretrain_batch(step, cfg, tok):
    """The batch of a step is a pure function of (seed, step): resuming needs no data state.
    Returns ids (B, T), prompt lengths (B,) (0 for plain text rows) and, with --drill_share, the
    drill rows' answers (B, T) bool (diffusion_loss scores those rows at full noise), else None.
    The drill rows come last: round(drill_share * B) of them."""
    docs = iter(pretrain_corpus(seed=mix_seed(cfg.seed, step), chat_reasoning=cfg.chat_reasoning))
    n_text = cfg.batch_size - round(cfg.drill_share * cfg.batch_size)
    ids, prompt_lengths = torch.empty(0, cfg.seq_len, dtype=torch.long), torch.empty(0, dtype=torch.long)
    while ids.size(0) < n_text:
        more, more_lengths = pack_rows([next(docs) for _ in range(cfg.batch_size)], tok, cfg.seq_len)
        ids, prompt_lengths = torch.cat([ids, more]), torch.cat([prompt_lengths, more_lengths])
    ids, prompt_lengths = ids[:n_text], prompt_lengths[:n_text]
    if n_text == cfg.batch_size:  # no drill rows (--drill_share=0, or too small for one row)
        return ids, prompt_lengths, None
    return add_drill_rows(ids, prompt_lengths, torch.zeros_like(ids, dtype=torch.bool),
                          cfg.batch_size - n_text, tok, seed=mix_seed(cfg.seed, step))


def add_drill_rows(ids, prompt_lengths, answers, n_rows, tok, seed):
    """Append n_rows rows of packed arithmetic drills (pack_drills) to a batch: ids (b, T), prompt
    lengths (b,) and drill answers (b, T) become (b + n_rows, ...), the drills with prompt length 0.
    Pretraining's and SFT's --drill_share rows both come from here."""
    drills, drill_answers = pack_drills(pretrain_drills(seed=seed), tok, ids.size(1), n_rows)
    prompt_lengths = torch.cat([prompt_lengths, torch.zeros(n_rows, dtype=torch.long)])  # (B,)
    return torch.cat([ids, drills]), prompt_lengths, torch.cat([answers, drill_answers])


def train_pretrain(cfg: PretrainConfig):
    device = start_run(cfg, "pretrain")
    tok = Tokenizer.tiny()
    model = Model(Config.preset(cfg.model)).init_weights(seed=cfg.seed).to(device)
    model.checkpointing = cfg.checkpointing
    print(f"model: {model.num_params():,} parameters (trained from scratch)")
    return denoising_loop(cfg, "pretrain", model, tok, device, lambda step: pretrain_batch(step, cfg, tok))


def denoising_loop(cfg, stage, model, tok, device, batch_at):
    """The training loop of pretraining and SFT: they differ only in their batches.

    batch_at(step) -> (x0 (B, T) clean rows, prompt lengths (B,), drill answers (B, T) or None);
    the prompt of a row is never masked (pretraining's plain rows have prompt length 0, so every
    token can be); a drill row has exactly its answers masked (diffusion_loss).

    On N processes (torchrun) every process builds the same whole batch and draws the same noise;
    each computes the loss of its own B/N rows (in micro-batches if asked), and DDP adds up the
    gradients (or FSDP, --fsdp, which also splits the weights and AdamW state: distributed.shard).
    So the losses, gradients and weights are those of one process running the whole batch, up to
    float rounding, for any N. (Not quite with --lora_dropout > 0: each process draws its rows'
    dropout masks from its own copy of the seeded RNG, so the masks, though not their statistics,
    depend on N.)

        B = 8 rows, N = 2 processes, --micro_batch=2:
            rows      0 1 | 2 3 || 4 5 | 6 7
            process   rank 0    || rank 1        each: 2 forward/backward passes, then 1 all-reduce"""
    # What training calls forward on: the model itself on one process, its DDP wrapper, or (--fsdp)
    # the model itself, sharded; before the optimizer, which must hold the shards.
    trainer = distributed.wrap(model, cfg.fsdp)
    optimizer = make_optimizer(model, cfg)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the masking noise
    start = restore(cfg, stage, model, optimizer, noise_gen) if cfg.resume else 0
    metrics = MetricsLog(cfg.out_dir, cfg.resume)
    mask_id = model.config.mask_token_id
    samples = sample_items()  # a few test questions to decode now and then
    model.train()

    t0, tokens_seen = time.time(), 0
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=stage, dynamic_ncols=True,
               disable=not distributed.is_main())
    for step in bar:
        # one optimizer step: a fresh batch, a fresh masking of it, the loss, the update
        lr = set_lr(optimizer, step, cfg)
        x0, prompt_lengths, answers = (t if t is None else t.to(device) for t in batch_at(step))
        drills = {} if answers is None else {"answers": answers}  # x0 (B, T), prompt_lengths (B,), answers (B, T)
        mine = distributed.my_rows(x0.size(0), "rows per step (--batch_size)")  # all rows on one process
        micro_batches = row_slices(mine.stop - mine.start, cfg.micro_batch, start=mine.start)
        loss, noise_state = torch.zeros((), device=device), noise_gen.get_state()
        for i, rows in enumerate(micro_batches):  # gradients add up over micro-batches
            # Each micro-batch draws the whole batch's noise again from the step's generator state,
            # so together they give the loss of one pass over the batch, row for row.
            noise_gen.set_state(noise_state)
            with distributed.sync_gradients(trainer, now=i == len(micro_batches) - 1):  # all-reduce once
                with autocast(device, cfg.dtype):
                    part = diffusion_loss(trainer, x0, prompt_lengths, mask_id, generator=noise_gen, rows=rows,
                                          **drills)
                # part = this micro-batch's rows' sum / B. DDP (and FSDP) average the gradients over
                # the N processes; times N makes that their sum: the gradient of the whole batch's loss.
                (part * distributed.world()).backward()
            loss += part.detach()
        distributed.all_sum(loss)  # the whole batch's loss: every process's rows
        # the gradients are the same on every process now, so is their norm and the clipped update
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += x0.numel()

        # log, look at a few samples (pretraining: and at the facts it knows), checkpoint
        done = step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        looks = cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps)
        facts = {}
        if looks and stage == "pretrain":
            facts = {"facts": round(fact_accuracy(model, tok, device, cfg.dtype), 4)}
        if done % cfg.log_every == 0 or done == cfg.steps:
            seconds = time.time() - t0
            grad_norm = grad_norm.item()  # (under FSDP a DTensor, replicated: the same on every process)
            tqdm.write(f"{stage} step {done:5d} | loss {loss.item():.4f} | grad norm {grad_norm:.2f} | "
                       f"lr {lr:.2e} | {tokens_seen / seconds:,.0f} tok/s | {seconds:6.1f}s"
                       + (f" | facts {facts['facts']:.1%}" if facts else ""))
            metrics.write(stage=stage, step=done, loss=loss.item(), grad_norm=grad_norm, lr=lr,
                          tokens_per_s=round(tokens_seen / seconds), seconds=round(seconds, 2), **facts)
        if looks:
            # every process decodes (the others would wait for rank 0 anyway); rank 0 prints
            print_samples(model, tok, samples, device, cfg.dtype)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save_run(cfg, stage, model, optimizer, done, noise_gen)  # rank 0 writes the plain model
    finish(cfg, stage, model, optimizer, noise_gen, time.time() - t0, tok)
    return model


@torch.no_grad()
def fact_accuracy(model, tok, device, dtype, n_rows=16):
    """The share of arithmetic facts the model knows: n_rows rows of packed drills (a fixed set,
    Arith's and Countdown's ranges), every answer masked at once, read in one forward pass; a
    fact counts if every token of its answer (and the EOS after it) is right."""
    seq_len = min(160, model.config.max_sequence_length)
    was_training = model.training
    model.eval()
    ids, answers = (t.to(device) for t in pack_drills(pretrain_drills(seed=-1), tok, seq_len, n_rows))
    with autocast(device, dtype):
        right = model(torch.where(answers, model.config.mask_token_id, ids)).argmax(-1) == ids  # (n_rows, T)
    model.train(was_training)
    known = total = 0
    for row_answers, row_right in zip(answers.tolist(), right.tolist()):
        # each run of answer tokens along the row is one drill's answer
        for is_answer, run in itertools.groupby(zip(row_answers, row_right), key=lambda pair: pair[0]):
            if is_answer:
                known += all(ok for _, ok in run)
                total += 1
    return known / total


def print_samples(model, tok, samples, device, dtype, gen_length=64):
    """Greedy answers to a few test questions: the quickest health check there is."""
    was_training = model.training
    model.eval()
    with autocast(device, dtype):
        done = complete(model, tok, samples, gen_length=gen_length, steps=gen_length // 2)
    for (task, ex), text in zip(samples, done.texts):
        tqdm.write(f"  sample: {task.eval_prompt(ex)!r} -> {text!r}")
    model.train(was_training)
