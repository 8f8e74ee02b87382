"""eval.py on the tiny tasks: complete() and evaluate() score a scripted model exactly; the shipped
checkpoints load and score; the table prints both tables; the command line's one-line errors."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import eval as evaluation
from checkpoint import CheckpointError
from eval import complete, evaluate, left_pad, stops_cleanly
from model import Config
from tasks_tiny import TINY_TASKS, TinyArith
from tokenizer import EOS, EOT, Tokenizer

ROOT = Path(__file__).resolve().parent.parent
GEN = 32  # generation length of every scripted answer


class Scripted(nn.Module):
    """A "model" that answers each known prompt with a scripted text: its logits put all the mass on
    the script's token at every answer position, so the sampler writes exactly the script (EOS after it).

    script: {chat-templated prompt ids (no padding): the answer text}. The answer is the last GEN
    positions of the input; the prompt is what precedes it, less the left padding."""

    def __init__(self, script):
        super().__init__()
        self.tok = Tokenizer.tiny()
        self.config = Config()  # the tiny tokenizer's ids: generate() reads the [MASK] id here
        self.anchor = nn.Parameter(torch.zeros(()))  # complete() reads the device from the parameters
        self.script = {tuple(prompt): self.tok.encode(text) for prompt, text in script.items()}

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        P = T - GEN
        logits = torch.zeros(B, T, self.config.embedding_size)
        for b in range(B):
            real = slice(None) if attention_mask is None else attention_mask[b, :P].bool()
            answer = self.script[tuple(input_ids[b, :P][real].tolist())]
            answer = (answer + [self.tok.eos_id] * GEN)[:GEN]
            logits[b, torch.arange(P, T), answer] = 100.0
        return logits


def scripted(task, examples, answers, prefix=""):
    """A Scripted model answering task.eval_prompt(example) (chat template, then `prefix`) with answers."""
    tok = Tokenizer.tiny()
    return Scripted({tuple(tok.chat(task.eval_prompt(ex)) + tok.encode(prefix)): text
                     for ex, text in zip(examples, answers)})


def arith_answers(examples):
    """Five scripted answers to five arith questions: right or wrong, well formed or not."""
    a = [ex.answer for ex in examples]
    return [f"<reasoning>{a[0]}={a[0]}</reasoning>\n<answer>{a[0]}</answer>{EOT}",  # right, well formed
            f"<answer>{a[1]}</answer>{EOT}",  # right, no reasoning tags
            f"<reasoning>{a[2]}</reasoning>\n<answer>{a[2] + 1}</answer>{EOT}",  # wrong, well formed
            f"<reasoning>x</reasoning>\n<answer>{a[3]}</answer>{EOT}junk",  # right, writes on after its turn
            f"no idea{EOS}"]  # wrong, no tags


def test_complete_writes_and_scores_each_scripted_answer():
    task, tok = TINY_TASKS["arith"], Tokenizer.tiny()
    examples = task.examples("test", 5)
    answers = arith_answers(examples)
    done = complete(scripted(task, examples, answers), tok, [(task, ex) for ex in examples], GEN)
    assert done.texts == [text.split(EOT)[0].split(EOS)[0] for text in answers]  # cut at the end of the turn
    assert done.correct.tolist() == [1, 1, 0, 1, 0]
    assert done.well_formed.tolist() == [True, False, True, False, False]  # 4th: junk after its end of turn
    assert done.rewards["correct"].tolist() == [2, 2, 0, 2, 0] and done.rewards["format"].tolist() == [.5, 0, .5, .5, 0]
    assert done.reward.tolist() == [2.5, 2, 0.5, 2.5, 0]
    first = done.completion_ids[0].tolist()
    n = len(tok.encode(answers[0]))
    assert first[:n] == tok.encode(answers[0]) and set(first[n:]) == {tok.eos_id}
    assert done.prompt_attention.sum(1).tolist() == [len(tok.chat(ex.prompt)) for ex in examples]


def test_evaluate_gives_the_exact_accuracy_and_format_of_a_scripted_model():
    task = TINY_TASKS["arith"]
    examples = task.examples("test", 5)
    model = scripted(task, examples, arith_answers(examples))
    r = evaluate(model, Tokenizer.tiny(), task, examples, GEN, batch_size=2)  # batches of 2, 2 and 1
    assert r["n"] == 5 and r["accuracy"] == pytest.approx(60.0) and r["format"] == pytest.approx(40.0)
    # standard error of the mean of [1, 1, 0, 1, 0]: sqrt(var / n), var = (3 * 0.4^2 + 2 * 0.6^2) / 4
    assert r["stderr"] == pytest.approx(100 * (0.3 / 5) ** 0.5)
    assert r["scores"] == [1.0, 1.0, 0.0, 1.0, 0.0]  # each question's own, in test-set order
    right = scripted(task, examples, [f"<reasoning></reasoning>\n<answer>{ex.answer}</answer>{EOT}" for ex in examples])
    r = evaluate(right, Tokenizer.tiny(), task, examples, GEN)
    assert r.pop("steps") < GEN // 2  # early stop: every answer ends before the last step
    assert r == {"accuracy": 100.0, "stderr": 0.0, "n": 5, "format": 100.0, "scores": [1.0] * 5}
    r = evaluate(right, Tokenizer.tiny(), task, examples, GEN, early_stop=False)
    assert r == {"accuracy": 100.0, "stderr": 0.0, "n": 5, "format": 100.0, "steps": GEN // 2,  # every step
                 "scores": [1.0] * 5}


def test_paired_gain_is_the_mean_per_question_difference_with_its_standard_error():
    columns = [("arith", 32), ("sudoku", 32)]
    old = {("arith", 32): {"scores": [0.0, 1.0, 1.0, 0.0]}, ("sudoku", 32): {"scores": [0.5, 0.5, 1.0, 0.0]}}
    new = {("arith", 32): {"scores": [1.0, 1.0, 1.0, 0.0]}, ("sudoku", 32): {"scores": [1.0, 0.5, 1.0, 0.5]}}
    gains = evaluation.paired_gain(new, old, columns)
    # arith's differences 1, 0, 0, 0: mean 0.25, sample variance 0.25, standard error sqrt(0.25 / 4)
    assert gains[("arith", 32)] == pytest.approx((25.0, 25.0))
    # sudoku's 0.5, 0, 0, 0.5: mean 0.25, variance 1/12
    assert gains[("sudoku", 32)] == pytest.approx((25.0, 100 * (1 / 12 / 4) ** 0.5))
    # the average's per-question differences: 0.75, 0, 0, 0.25 -> mean 0.25, variance 0.125
    assert gains["average"] == pytest.approx((25.0, 100 * (0.125 / 4) ** 0.5))
    # the same model: no gain, no error; and far below the unpaired sqrt(se_new^2 + se_old^2) when the
    # two differ on one question of many
    assert evaluation.paired_gain(old, old, columns)["average"] == (0.0, 0.0)
    many_old = {("arith", 32): {"scores": [1.0, 0.0] * 50}}
    many_new = {("arith", 32): {"scores": [1.0, 0.0] * 49 + [1.0, 1.0]}}
    gain, stderr = evaluation.paired_gain(many_new, many_old, [("arith", 32)])[("arith", 32)]
    unpaired = (evaluation.mean_and_stderr(many_new[("arith", 32)]["scores"])[1] ** 2
                + evaluation.mean_and_stderr(many_old[("arith", 32)]["scores"])[1] ** 2) ** 0.5  # about 7.1
    assert gain == pytest.approx(1.0) and stderr == pytest.approx(1.0) and stderr < unpaired / 5
    with pytest.raises(ValueError):  # scores of other questions do not pair
        evaluation.paired_gain({("arith", 32): {"scores": [1.0]}}, many_old, [("arith", 32)])


def test_eval_prefix_is_prefilled_and_starts_the_scored_text():
    class PrefilledArith(TinyArith):
        eval_prefix = "<reasoning>"

    task = PrefilledArith()
    examples = task.examples("test", 2)
    answers = [f"{ex.answer}</reasoning>\n<answer>{ex.answer}</answer>{EOT}" for ex in examples]
    model = scripted(task, examples, answers, prefix="<reasoning>")
    done = complete(model, Tokenizer.tiny(), [(task, ex) for ex in examples], GEN)
    assert done.texts == [f"<reasoning>{ex.answer}</reasoning>\n<answer>{ex.answer}</answer>" for ex in examples]
    assert done.correct.tolist() == [1, 1] and done.well_formed.tolist() == [True, True]
    with pytest.raises(KeyError):  # the RL prompt has no prefix: the script does not know it
        complete(model, Tokenizer.tiny(), [(task, ex) for ex in examples], GEN, prompt="rl")
    with pytest.raises(ValueError, match="--prompt='train': expected one of eval, rl"):
        complete(model, Tokenizer.tiny(), [(task, ex) for ex in examples], GEN, prompt="train")


def test_left_pad_and_stops_cleanly():
    ids, att = left_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and att.tolist() == [[1, 1, 1], [0, 0, 1]]
    tok = Tokenizer.tiny()
    E, T = tok.eos_id, tok.eot_id
    assert stops_cleanly(tok, [5, T, E, E]) and stops_cleanly(tok, [5, E, E]) and stops_cleanly(tok, [5, T])
    assert not stops_cleanly(tok, [5, 6, 7])  # never ends
    assert not stops_cleanly(tok, [5, T, 6, E])  # writes on after the end of its turn


# -- the shipped checkpoints and the table -------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-base", "tiny-sft", "tiny-grpo", "tiny-d1"])
def test_shipped_checkpoints_load_and_score(name, capsys):
    path = ROOT / "checkpoints" / f"{name}.pt"
    assert path.stat().st_size <= 20 * 2**20  # the size limit
    results = evaluation.eval_checkpoint(path, "arith", gen_lengths=(32,), n=4, batch_size=4, dtype="float32")
    r = results[("arith", 32)]
    assert list(results) == [("arith", 32)] and r["n"] == 4
    assert r["accuracy"] in (0, 25, 50, 75, 100) and r["format"] in (0, 25, 50, 75, 100)  # 4 items, 0 or 1 each
    if name in ("tiny-sft", "tiny-d1"):
        assert r["format"] >= 50  # SFT taught the format
    assert capsys.readouterr().out == (f"arith gen_length=32: accuracy={r['accuracy']:.1f}% format={r['format']:.1f}% "
                                       f"n=4 steps={r['steps']:.1f}\n")
    assert r["steps"] <= 16  # d1's protocol takes gen_length / 2; early stop may end sooner


def fake_results(accuracy, fmt):
    """eval_checkpoint's results for the columns (arith, 32) and (arith, 64)."""
    return {("arith", g): {"accuracy": a, "stderr": a / 10, "n": 2, "format": f, "scores": [a / 100] * 2}
            for g, a, f in zip((32, 64), accuracy, fmt)}


def test_table_prints_accuracy_and_format_rows_with_averages(monkeypatch, capsys, tmp_path):
    rows = (("base", tmp_path / "base.pt"), ("sft", tmp_path / "sft.pt"))
    for _, path in rows:
        path.touch()
    results = {rows[0][1]: fake_results((50.0, 25.0), (100.0, 50.0)), rows[1][1]: fake_results((0.0, 12.5), (0.0, 0.0))}
    monkeypatch.setattr(evaluation, "TABLE_ROWS", rows)
    monkeypatch.setattr(evaluation, "ESTIMATOR_ROWS", ())  # the shipped estimator rows are not these fakes
    monkeypatch.setattr(evaluation, "eval_checkpoint", lambda path, *args, **kw: results[path])
    evaluation.print_table("arith", gen_lengths=(32, 64), n=2)
    accuracy, fmt = capsys.readouterr().out.split("Format:")
    header = "| model | arith 32 | arith 64 | average |\n|---|---|---|---|"
    assert header + "\n| base | 50.0 (5.0) | 25.0 (2.5) | 37.5 |\n| sft | 0.0 (0.0) | 12.5 (1.2) | 6.2 |" in accuracy
    assert header + "\n| base | 100.0 | 50.0 | 75.0 |\n| sft | 0.0 | 0.0 | 0.0 |" in fmt
    assert "| gain |" not in fmt  # these rows' names are not the table's, so no gain is printed


def test_table_prints_each_rows_gain_over_the_row_it_was_trained_from(monkeypatch, capsys, tmp_path):
    names = ("base (pretrained)", "+SFT", "+diffu-GRPO", "d1 (SFT + diffu-GRPO)")
    rows = tuple((name, tmp_path / f"{i}.pt") for i, name in enumerate(names))
    for _, path in rows:
        path.touch()
    accuracies = {"base (pretrained)": (50.0, 0.0), "+SFT": (50.0, 50.0), "+diffu-GRPO": (100.0, 0.0),
                  "d1 (SFT + diffu-GRPO)": (50.0, 100.0)}
    results = {path: fake_results(accuracies[name], (100.0, 100.0)) for name, path in rows}
    results[rows[1][1]][("arith", 64)]["scores"] = [1.0, 0.0]  # SFT's 50% at length 64: right on question 0 only
    monkeypatch.setattr(evaluation, "TABLE_ROWS", rows)
    monkeypatch.setattr(evaluation, "ESTIMATOR_ROWS", ())
    monkeypatch.setattr(evaluation, "eval_checkpoint", lambda path, *args, **kw: results[path])
    evaluation.print_table("arith", gen_lengths=(32, 64), n=2)
    gains = capsys.readouterr().out.split("Gain in points")[1].splitlines()
    assert gains[2:5] == ["| gain | arith 32 | arith 64 | average |", "|---|---|---|---|",
                          "| +SFT over base (pretrained) | +0.0 (0.0; -) | +50.0 (50.0; +1.0) | +25.0 (25.0; +1.0) |"]
    assert gains[5] == "| +diffu-GRPO over base (pretrained) | +50.0 (0.0; -) | +0.0 (0.0; -) | +25.0 (0.0; -) |"
    assert gains[6] == "| d1 (SFT + diffu-GRPO) over +SFT | +0.0 (0.0; -) | +50.0 (50.0; +1.0) | +25.0 (25.0; +1.0) |"
    assert len(gains) == 7


def test_table_adds_the_estimator_rows_that_are_trained_and_says_how_to_train_the_others(monkeypatch, capsys,
                                                                                        tmp_path):
    base, coupled = tmp_path / "base.pt", tmp_path / "coupled.pt"
    base.touch(), coupled.touch()
    monkeypatch.setattr(evaluation, "TABLE_ROWS", (("base", base),))
    monkeypatch.setattr(evaluation, "ESTIMATOR_ROWS", (("d1, coupled", coupled, "coupled"),
                                                       ("d1, elbo", tmp_path / "elbo.pt", "elbo")))
    results = {base: fake_results((50.0, 25.0), (100.0, 50.0)), coupled: fake_results((60.0, 35.0), (100.0, 50.0))}
    monkeypatch.setattr(evaluation, "eval_checkpoint", lambda path, *args, **kw: results[path])
    evaluation.print_table("arith", gen_lengths=(32, 64), n=2)
    out = capsys.readouterr().out
    assert "| base | 50.0 (5.0) | 25.0 (2.5) | 37.5 |\n| d1, coupled | 60.0 (6.0) | 35.0 (3.5) | 47.5 |" in out
    assert "| d1, elbo |" not in out
    assert (f"(no row 'd1, elbo': {tmp_path / 'elbo.pt'} is not trained; python train.py --stage grpo "
            f"--estimator=elbo --out_dir=out/d1-elbo --export={tmp_path / 'elbo.pt'})") in out


def test_table_of_real_checkpoints_matches_eval_checkpoint(monkeypatch, capsys, tmp_path):
    rows = (("base", ROOT / "checkpoints/tiny-base.pt"), ("sft", ROOT / "checkpoints/tiny-sft.pt"))
    monkeypatch.setattr(evaluation, "TABLE_ROWS", rows)
    monkeypatch.setattr(evaluation, "ESTIMATOR_ROWS", ())
    monkeypatch.setattr(evaluation, "TABLE_CELLS", tmp_path / "table")
    evaluation.print_table("sudoku", gen_lengths=(32,), n=2, batch_size=2)
    accuracy, fmt = capsys.readouterr().out.split("Format:")
    for name, path in rows:
        r = evaluation.eval_checkpoint(path, "sudoku", gen_lengths=(32,), n=2, batch_size=2, quiet=True)[("sudoku", 32)]
        cell = f"{r['accuracy']:.1f} ({r['stderr']:.1f})"
        assert f"| {name} | {cell} | {r['accuracy']:.1f} |" in accuracy
        assert f"| {name} | {r['format']:.1f} | {r['format']:.1f} |" in fmt


def test_kept_cells_are_read_back_and_measured_again_when_the_checkpoint_changes(monkeypatch, tmp_path, capsys):
    path, kept = tmp_path / "sft.pt", tmp_path / "table"
    path.write_bytes((ROOT / "checkpoints/tiny-sft.pt").read_bytes())
    run = lambda **kw: evaluation.eval_checkpoint(path, "sudoku", gen_lengths=(32,), n=2, batch_size=2,  # noqa: E731
                                                  dtype="float32", kept_in=kept, **kw)
    measured = run()
    assert [f.name.split("-")[:3] for f in kept.iterdir()] == [["sft", "sudoku", "32"]]
    loads, real_load = [], evaluation.load_model
    monkeypatch.setattr(evaluation, "load_model", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    capsys.readouterr()
    assert run() == measured and loads == []  # read back: the model is not even loaded
    r = measured[("sudoku", 32)]
    assert capsys.readouterr().out == (f"sudoku gen_length=32: accuracy={r['accuracy']:.1f}% format={r['format']:.1f}% "
                                       f"n=2 steps={r['steps']:.1f}\n")
    run(quiet=True, threshold=0.9)  # other settings: measured, and kept beside the first
    run(quiet=True, early_stop=False)
    assert len(loads) == 2 and len(list(kept.iterdir())) == 3
    ckpt = torch.load(path, weights_only=False)  # the same file name, other weights: measured again
    next(iter(ckpt["model"].values())).add_(1.0)
    torch.save(ckpt, path)
    run(quiet=True)
    assert len(loads) == 3 and len(list(kept.iterdir())) == 4


def test_table_names_a_missing_checkpoint(monkeypatch, tmp_path, user_error):
    monkeypatch.setattr(evaluation, "TABLE_ROWS", (("base", tmp_path / "nope.pt"),))
    with pytest.raises(CheckpointError, match="nope.pt is missing: train it first"):
        evaluation.print_table("arith", gen_lengths=(32,), n=2)
    message = user_error(evaluation.main, ["--table", "--tasks=arith", "--gen_length=32"], "eval.py")
    assert message == f"{tmp_path / 'nope.pt'} is missing: train it first (README, 'The tiny d1 table')"


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one of --ckpt=FILE, --table, --rescore FILE..."),
    (["--ckpt=a.pt", "--table"], "give exactly one of --ckpt=FILE, --table, --rescore FILE..., --model=DIR (got --ckpt, --table)"),
    (["--table", "--gen_length=40"], "--gen_length=40 must be a multiple of --block_length=32"),
    (["--rescore", "a.json", "--task=chess"], "--task='chess': expected one of gsm8k, math500, countdown, sudoku, math"),
    (["--ckpt=checkpoints/tiny-sft.pt", "--n=0"], "--n=0: must be at least 1"),
    (["--ckpt=nope.pt"], "checkpoint nope.pt does not exist"),
    ([f"--ckpt={ROOT / 'checkpoints/tiny-sft.pt'}", "--tasks=chess"], "unknown task 'chess'"),
    (["--table", "--against=checkpoints/tiny-sft.pt"], "--against goes with --ckpt"),
    ([f"--ckpt={ROOT / 'checkpoints/tiny-sft.pt'}", "--against=nope.pt"], "checkpoint nope.pt does not exist"),
])
def test_command_line_errors_are_one_line(argv, message, user_error):
    assert user_error(evaluation.main, argv, "eval.py").startswith(message)


def test_command_line_against_prints_the_gain_and_keeps_both_checkpoints_cells(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(evaluation, "TABLE_CELLS", tmp_path / "table")
    sft, d1 = ROOT / "checkpoints/tiny-sft.pt", ROOT / "checkpoints/tiny-d1.pt"
    argv = [f"--ckpt={d1}", f"--against={sft}", "--tasks=sudoku", "--gen_length=32", "--n=4", "--dtype=float32"]
    evaluation.main(argv)
    out = capsys.readouterr().out
    assert sorted(f.name.split("-")[1] for f in (tmp_path / "table").iterdir()) == ["d1", "sft"]
    kept = {f.name.split("-")[1]: evaluation.json.loads(f.read_text()) for f in (tmp_path / "table").iterdir()}
    cell = ("sudoku", 32)
    gain, stderr = evaluation.paired_gain({cell: kept["d1"]}, {cell: kept["sft"]}, [cell])[cell]
    assert f"against {sft}:" in out
    ratio = f"{gain / stderr:+.1f}" if stderr else "-"
    assert out.splitlines()[-1] == f"| {d1} over {sft} | {gain:+.1f} ({stderr:.1f}; {ratio}) | {gain:+.1f} ({stderr:.1f}; {ratio}) |"
    assert gain == pytest.approx(kept["d1"]["accuracy"] - kept["sft"]["accuracy"])


def test_command_line_evaluates_a_checkpoint(capsys):
    evaluation.main(["--ckpt", str(ROOT / "checkpoints/tiny-d1.pt"), "--tasks=countdown", "--gen_length=32", "--n=2",
                     "--dtype=float32"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("countdown gen_length=32: accuracy=")
    assert lines[0].endswith(" n=2 steps=16.0")  # its traces outrun 32 tokens: early stop never comes
