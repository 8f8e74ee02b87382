"""pretrain.py: rows of the pretraining corpus (packed plain text, chat documents alone with a clean
prompt), and batches that are a pure function of (seed, step)."""
import re

import pytest
import torch

from common import ConfigError
from pretrain import PretrainConfig, pack_drills, pack_rows, pretrain_batch
from tasks_tiny import _apply
from tokenizer import END_HEADER, Tokenizer, chat_prompt


def test_pack_rows_gives_chat_documents_their_own_padded_row_with_a_clean_prompt():
    tok = Tokenizer.tiny()
    rows, prompt_lengths = pack_rows(["1+1=2", "2+2=4", chat_prompt("q") + "a", "3+3=6"], tok, 48)
    assert rows.shape == (2, 48)
    assert rows[0][0] == tok.bos_id and rows[0][-1] == tok.eos_id  # the chat document, EOS-padded
    assert rows[0][: len(tok.chat("q")) + 1].tolist() == tok.chat("q") + tok.encode("a")
    plain = "1+1=2<|endoftext|>2+2=4<|endoftext|>3+3=6"  # plain documents packed around it
    assert tok.decode(rows[1][: len(tok.encode(plain))].tolist()) == plain
    assert prompt_lengths.tolist() == [len(tok.chat("q")), 0]  # the loss keeps chat prompts clean


def test_pack_rows_starts_a_new_row_when_a_document_does_not_fit():
    tok = Tokenizer.tiny()
    docs = ["1+1=2 and 3+3=6", "4+4=8 and 5+5=10", "6+6=12"]
    n = [len(tok.encode(d)) for d in docs]
    seq_len = n[0] + 1 + n[1] - 1  # the first two do not fit together
    rows, prompt_lengths = pack_rows(docs, tok, seq_len)
    assert rows.shape == (2, seq_len) and prompt_lengths.tolist() == [0, 0]
    assert rows[0].tolist() == tok.encode(docs[0]) + [tok.eos_id] * (seq_len - n[0])
    assert rows[1][: n[1] + 1 + n[2]].tolist() == tok.encode(docs[1]) + [tok.eos_id] + tok.encode(docs[2])


def test_batches_are_a_pure_function_of_seed_and_step():
    tok = Tokenizer.tiny()
    cfg = PretrainConfig(batch_size=6, seq_len=64)
    ids, prompt_lengths, answers = pretrain_batch(3, cfg, tok)
    assert answers is None  # no drill rows by default
    assert ids.shape == (6, 64) and prompt_lengths.shape == (6,) and ids.dtype == torch.long
    again = pretrain_batch(3, cfg, tok)
    assert torch.equal(ids, again[0]) and torch.equal(prompt_lengths, again[1])
    assert not torch.equal(ids, pretrain_batch(4, cfg, tok)[0])
    assert not torch.equal(ids, pretrain_batch(3, PretrainConfig(batch_size=6, seq_len=64, seed=1), tok)[0])
    assert prompt_lengths.any()  # this batch has a chat row: its prompt ends with the assistant header
    for row, P in zip(ids.tolist(), prompt_lengths.tolist()):
        if P:
            assert tok.decode(row[:P]).endswith(END_HEADER + "\n\n")


def test_drill_rows_pack_questions_and_answers_and_come_last():
    """--drill_share: the last round(share x B) rows pack "7+8=15" drills, answers (and their EOS)
    marked; a drill that does not fit starts the next row; the rest of the batch is unchanged."""
    tok = Tokenizer.tiny()
    ids, answers = pack_drills(iter([("7+8=", "15"), ("3-1=", "2"), ("9/3=", "3")] * 9), tok, 16, 3)
    assert ids.shape == answers.shape == (3, 16)
    assert tok.decode(ids[0].tolist()).startswith("7+8=15<|endoftext|>3-1=2<|endoftext|>")
    assert tok.decode(ids[0][answers[0]].tolist()) == "15<|endoftext|>2<|endoftext|>"  # a third: no room
    assert tok.decode(ids[1].tolist()).startswith("9/3=3<|endoftext|>")
    plain = PretrainConfig(batch_size=8, seq_len=64)
    drilled = PretrainConfig(batch_size=8, seq_len=64, drill_share=0.25)
    ids, prompt_lengths, answers = pretrain_batch(3, drilled, tok)
    assert answers.shape == ids.shape and not answers[:6].any() and answers[6:].any(dim=1).all()
    assert torch.equal(ids[:6], pretrain_batch(3, plain, tok)[0][:6])  # the text rows: the plain run's first 6
    assert pretrain_batch(3, PretrainConfig(batch_size=8, seq_len=64, drill_share=0.01), tok)[2] is None  # < 1 row
    for row, marks in zip(ids[6:].tolist(), answers[6:].tolist()):
        text = "".join(tok.decode([t]) if not m else f"[{tok.decode([t])}]" for t, m in zip(row, marks))
        for drill in text.split("[<|endoftext|>]")[:-1]:  # each "a op b=[c]" drill is a true fact
            a, op, b, answer = re.fullmatch(r"(\d+)([-+*/])(\d+)=(.+)", drill).groups()
            assert _apply(int(a), op, int(b)) == int(answer.replace("[", "").replace("]", ""))


def test_chat_reasoning_rows_show_a_trace_and_the_share_is_checked():
    """--chat_reasoning=1: every chat row of a batch answers with a trace; the share must lie in 0..1."""
    tok = Tokenizer.tiny()
    ids, prompt_lengths, _ = pretrain_batch(3, PretrainConfig(batch_size=16, seq_len=160, chat_reasoning=1.0), tok)
    chats = [tok.decode(row.tolist()) for row, P in zip(ids, prompt_lengths) if P]
    assert chats and all("<reasoning><" not in c and "</reasoning>\n<answer>" in c for c in chats)
    with pytest.raises(ConfigError, match="chat_reasoning"):
        PretrainConfig(chat_reasoning=1.5)
