"""sft.py: the row layout (clean prompt, response, eot, EOS padding), seeded batches, and the loss on it."""

import pytest
import torch
import torch.nn.functional as F

import sft
from diffusion import EPS, diffusion_loss
from tasks_tiny import TINY_TASKS
from tokenizer import Tokenizer


def test_row_is_prompt_response_eot_then_eos_padding():
    tok = Tokenizer.tiny()
    ids, P = sft.encode_example(tok, "2+2?", "<reasoning>2+2=4</reasoning>\n<answer>4</answer>", 64)
    assert len(ids) == 64 and ids[:P] == tok.chat("2+2?")
    answer = tok.encode("<reasoning>2+2=4</reasoning>\n<answer>4</answer>")
    assert ids[P:P + len(answer)] == answer and ids[P + len(answer)] == tok.eot_id
    assert set(ids[P + len(answer) + 1:]) == {tok.eos_id}


def test_too_long_example_is_refused_not_cut():
    tok = Tokenizer.tiny()
    with pytest.raises(ValueError, match="does not fit --seq_len=16"):
        sft.encode_example(tok, "a question", "an answer that is long", 16)


def test_batches_are_seeded_epochs_covering_every_example():
    ids = torch.arange(10)[:, None].repeat(1, 3)
    lengths = torch.arange(10)
    seen = torch.cat([sft.sft_batch(step, 4, ids, lengths, seed=7)[0][:, 0] for step in range(5)])  # 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    again = torch.cat([sft.sft_batch(step, 4, ids, lengths, seed=7)[0][:, 0] for step in range(5)])
    assert torch.equal(seen, again)
    x, P = sft.sft_batch(3, 4, ids, lengths, seed=7)
    assert torch.equal(x[:, 0], P)  # rows and their prompt lengths stay together


def test_collated_batch_never_masks_a_prompt_token_and_scores_the_eos_padding(tiny_model, record_inputs):
    tok = Tokenizer.tiny()
    examples = sft.sft_examples([TINY_TASKS["arith"]], 6, seed=0)
    ids, P = sft.encode_dataset(tok, examples, 96)
    model = tiny_model(tokenizer=True, n_layers=1)
    with record_inputs(model) as seen:
        loss = diffusion_loss(model, ids, P, tok.mask_id, generator=torch.Generator().manual_seed(3))
    [xt] = seen
    is_prompt = torch.arange(96)[None] < P[:, None]
    assert not (xt[is_prompt] == tok.mask_id).any()  # the prompt is never masked
    masked = xt == tok.mask_id
    assert (masked & (ids == tok.eos_id)).any()  # EOS padding is masked and so inside the loss
    # the loss by hand: CE on masked positions / p, summed per row, / answer length, batch mean
    g = torch.Generator().manual_seed(3)
    p = (1 - EPS) * torch.rand(6, 1, generator=g) + EPS
    ce = F.cross_entropy(model(xt).transpose(1, 2), ids, reduction="none")
    expected = ((ce * masked / p).sum(1) / (96 - P).float()).mean()
    torch.testing.assert_close(loss, expected)


def test_sft_examples_use_each_tasks_traces():
    examples = sft.sft_examples(list(TINY_TASKS.values()), 5, seed=1)
    assert len(examples) == 15
    for (question, response), task in zip(examples, [t for t in TINY_TASKS.values() for _ in range(5)]):
        ex = next(e for e in task.examples("train", 5) if e.prompt == question)
        assert task.correct(response, ex) == 1.0 and task.format_ok(response)
    assert examples == sft.sft_examples(list(TINY_TASKS.values()), 5, seed=1)


def test_backtrack_share_sets_how_many_traces_try_check_and_retry():
    tasks = list(TINY_TASKS.values())
    def retries(examples):  # traces with a line marked " no": a wrong try, then the right one
        return sum(any(line.endswith(" no") for line in response.split("\n")) for _, response in examples)
    assert sft.sft_examples(tasks, 40, seed=2) == sft.sft_examples(tasks, 40, seed=2, backtrack=0.0)
    assert retries(sft.sft_examples(tasks, 40, seed=2)) == 0  # the default: clean traces
    assert 0.15 * 120 < retries(sft.sft_examples(tasks, 40, seed=2, backtrack=0.3)) < 0.45 * 120
    arith = sft.sft_examples([TINY_TASKS["arith"]], 40, seed=2, backtrack=1.0)
    assert retries(arith) == 40  # every Arith trace can slip and undo a step
    for task in tasks:  # clean traces still solve their questions
        for (question, response), ex in zip(sft.sft_examples([task], 40, seed=2, backtrack=0.0),
                                            task.examples("train", 40)):
            assert question == task.rl_prompt(ex) and task.correct(response, ex) == 1.0 and task.format_ok(response)
