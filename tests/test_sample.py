"""sample.py: runs a tiny random checkpoint end to end, shows progress, refuses a too-long prompt."""
import io
from collections import Counter
from pathlib import Path

import pytest
import torch

import sample
from checkpoint import load_model, save_pretrained
from diffusion import generate
from eval import complete
from tasks_tiny import TINY_TASKS
from tokenizer import Tokenizer, end_of_turn

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny(tiny_checkpoint):
    """(path of a project checkpoint of a small random model with the tiny tokenizer's vocabulary, the model)."""
    path = tiny_checkpoint("tiny.pt")
    return path, load_model(path)[0].eval()


def test_prints_progress_then_the_answer(tiny, capsys):
    path, model = tiny
    sample.main([f"--model={path}", "--prompt=What is 2+3?", "--gen_length=16", "--steps=8",
                 "--block_length=8"])
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("[step")]
    # Not a terminal (captured): one line every steps // 8 = 1 step, each gen_length wide or so.
    assert [line.split("]")[0] for line in progress] == [f"[step {s:>4}/8" for s in range(1, 9)]
    assert sample.MASK_SHOWN in progress[0] and sample.MASK_SHOWN not in progress[-1]  # it fills in

    # The last line is the greedy answer, cut at the first end token: recompute it independently.
    tok = Tokenizer.tiny()
    prompt = torch.tensor([tok.chat("What is 2+3?")])
    ids = generate(model, prompt, steps=8, gen_length=16, block_length=8)[0, prompt.size(1):].tolist()
    assert out.endswith("\n" + end_of_turn(tok.decode(ids)) + "\n")


def test_runs_on_a_hugging_face_directory_too(tiny, tmp_path, capsys):
    _, model = tiny
    save_pretrained(model, tmp_path / "hf")
    sample.main([f"--model={tmp_path / 'hf'}", "--prompt=hi", "--gen_length=8", "--steps=4", "--block_length=8"])
    assert "[step    4/4]" in capsys.readouterr().out


def test_too_long_prompt_is_refused_with_its_length(tiny):
    path, _ = tiny
    long = "x " * 300  # 600 tokens and the template's > the tiny model's 256
    n = len(Tokenizer.tiny().chat(long))
    with pytest.raises(SystemExit, match=rf"^sample.py: error: the chat-templated prompt is {n} tokens and "
                                         rf"gen_length 8: {n + 8} exceeds the model's context of 256 tokens$"):
        sample.main([f"--model={path}", f"--prompt={long}", "--gen_length=8", "--steps=8",
                     "--block_length=8"])


@pytest.mark.parametrize("argv, message", [
    (["--prompt=hi"], "--model is required"),
    (["--model=checkpoints/tiny-sft.pt", "--prompt=  "], "--prompt is required and must not be blank"),
    (["--model=checkpoints/tiny-sft.pt", "--prompt=hi", "--dtype=int8"], "--dtype='int8': expected one of auto, float32"),
    (["--model=checkpoints/tiny-sft.pt", "--prompt=hi", "--temperature=-1"], "--temperature=-1.0: must be at least 0"),
    (["--model=checkpoints/tiny-sft.pt", "--prompt=hi", "--steps=3"], "--steps=3 must be a multiple of the number of blocks"),
    (["--model=checkpoints/tiny-sft.pt", "--prompt=hi", "--stepz=3"], "unknown key --stepz; did you mean --steps?"),
    (["--model=nope.pt", "--prompt=hi"], "--model=nope.pt: no such file or folder"),
    (["--model=checkpoints/tiny-sft.pt", "--order=chess"], "--order='chess': expected one of countdown, sudoku, arith"),
    (["--model=checkpoints/tiny-sft.pt", "--order=arith", "--prompt=hi"], "--order asks the task's own questions"),
    (["--model=checkpoints/tiny-sft.pt", "--order=arith", "--n=0"], "--n=0: must be at least 1"),
    (["--model=checkpoints/tiny-sft.pt", "--order=arith", "--temperature=0.5"], "--order decodes greedily"),
])
def test_user_errors_are_one_line(argv, message, user_error):
    assert user_error(sample.main, argv, "sample.py").startswith(message)


def test_a_typed_backslash_n_is_a_newline():
    assert sample.SampleConfig(model="checkpoints/tiny-sft.pt", prompt=r"line 1\nline 2").prompt == "line 1\nline 2"


def test_render():
    tok = Tokenizer.tiny()
    M, E, T = tok.mask_id, tok.eos_id, tok.eot_id
    e_acute = list("é".encode())  # two byte tokens: decoded together, not as two replacement chars
    ids = [72, 105, *e_acute, M, M, tok.n_vocab + 1, T, E, E]  # a padding row of the embedding, no token
    assert sample.render(ids, tok) == "Hié░░\ufffd···"
    assert sample.render([72, 105], tok) == "Hi"


def test_terminal_progress_redraws_in_place():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tok, term = Tokenizer.tiny(), Terminal()
    on_step = sample.show_progress(tok, P=2, steps=4, out=term)
    x = torch.tensor([[1, 2, tok.mask_id, tok.mask_id, 27]])  # 27: ESC, must not reach the terminal raw
    on_step(x, 1)
    on_step(x, 2)
    first, second = term.getvalue().split("\x1b[2F")  # second frame: up over the 2 rows drawn
    assert first == "\r\x1b[Jstep 1/4\n░░\ufffd\n"  # clear to the end of the screen, draw
    assert second == "\r\x1b[Jstep 2/4\n░░\ufffd\n"


# -- --order: is the answer written before its reasoning? ----------------------------------------


def test_answer_first_compares_the_answers_step_with_the_reasoning_before_it():
    tok = Tokenizer.tiny()
    reasoning, tag, answer = tok.encode("<reasoning>3+4=7</reasoning>\n"), tok.encode("<answer>"), tok.encode("7")
    ids = reasoning + tag + answer + tok.encode("</answer>")
    a = len(reasoning) + len(tag)  # the answer's position
    late = list(range(len(ids)))  # unmasked left to right: the answer after all its reasoning
    assert sample.answer_first(late, ids, tag) is False
    early = late.copy()
    early[a] = 0  # the answer unmasked at the first step, the reasoning after it
    assert sample.answer_first(early, ids, tag) is True
    same = [5] * len(ids)  # one step for everything: not before
    assert sample.answer_first(same, ids, tag) is False
    assert sample.answer_first(late, reasoning + answer, tag) is None  # no <answer> tag


def test_order_counts_answers_written_first_and_scores_them_like_the_evaluation(capsys):
    model, tok = load_model(ROOT / "checkpoints/tiny-sft.pt")[0].eval(), Tokenizer.tiny()
    task = TINY_TASKS["arith"]
    examples = task.examples("test", 8)
    first, tagged, score, given, right = sample.answer_order(model, tok, task, examples, 32, 16, 32)
    done = complete(model, tok, [(task, ex) for ex in examples], 32)  # the evaluation's sampler, one batch
    assert score == done.correct.sum().item() and 0 <= first <= tagged <= 8
    assert tagged == sum("<answer>" in text for text in done.texts)
    assert given == Counter(task.answer_of(text) for text in done.texts)
    for answer in given:  # each answer's right uses: the questions given it whose gold it is
        assert right[answer] == sum(task.answer_of(text) == answer and str(ex.answer) == answer
                                    for ex, text in zip(examples, done.texts))
    # left to right, one token per step: an answer can never come before the reasoning to its left
    assert sample.answer_order(model, tok, task, examples, 32, 32, 1)[0] == 0
    sample.main([f"--model={ROOT / 'checkpoints/tiny-sft.pt'}", "--order=arith", "--n=8", "--gen_length=32",
                 "--steps=16"])
    assert capsys.readouterr().out.strip() == (
        f"arith, gen 32, block 32, 16 steps, 8 test questions: answer written before its reasoning ends in "
        f"{first} of the {tagged} answers with an <answer> tag; accuracy {100 * score / 8:.1f}%; "
        f"{len(given)} different answers, the commonest (right): "
        + ", ".join(f"{answer!r} x{count} ({right[answer]:g})" for answer, count in given.most_common(4)))
