"""sample.py: runs a tiny random checkpoint end to end, shows progress, refuses a too-long prompt."""
import io
from dataclasses import asdict

import pytest
import torch

import sample
from checkpoint import save_checkpoint
from diffusion import generate
from model import Config, Model
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of a project checkpoint of a random tiny model, the model)."""
    model = Model(Config.preset("tiny")).init_weights(seed=0).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "config": asdict(model.config), "stage": "pretrain"}, path)
    return path, model


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
    assert out.endswith("\n" + sample.final_answer(ids, tok) + "\n")


def test_runs_on_a_hugging_face_directory_too(tiny, tmp_path, capsys):
    _, model = tiny
    model.save_pretrained(tmp_path)
    sample.main([f"--model={tmp_path}", "--prompt=hi", "--gen_length=8", "--steps=4", "--block_length=8"])
    assert "[step    4/4]" in capsys.readouterr().out


def test_too_long_prompt_is_refused_with_its_length(tiny):
    path, _ = tiny
    long = "x " * 300  # 600 tokens and the template's > the tiny model's 256
    n = len(Tokenizer.tiny().chat(long))
    with pytest.raises(SystemExit, match=rf"exceeds the model's context of 256 tokens .*prompt is {n} tokens"):
        sample.main([f"--model={path}", f"--prompt={long}", "--gen_length=8", "--steps=8",
                     "--block_length=8"])


def test_unloadable_model_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="cannot load .*does not exist"):
        sample.main([f"--model={tmp_path / 'nope.pt'}", "--prompt=hi"])


def test_render_and_final_answer():
    tok = Tokenizer.tiny()
    M, E, T = tok.mask_id, tok.eos_id, tok.eot_id
    e_acute = list("é".encode())  # two byte tokens: decoded together, not as two replacement chars
    ids = [72, 105, *e_acute, M, M, tok.n_vocab + 1, T, E, E]  # a padding row of the embedding, no token
    assert sample.render(ids, tok) == "Hié░░\ufffd···"
    assert sample.final_answer(ids, tok) == "Hié░░\ufffd"
    assert sample.final_answer([72, 105], tok) == "Hi"  # no end token: everything


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
