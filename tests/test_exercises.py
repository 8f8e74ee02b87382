"""exercises/: every check passes on the project's own code and says "not implemented yet" on the
untouched stubs; the stubs have the project's signatures; each check catches the mistakes students
make and names them; `run` plugs a student's function into training; the experiments run.

(The stub tests assume the exercise files are untouched, as shipped: in a student's checkout,
use `python -m exercises` instead.)"""
import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import diffusion
import grpo
import lora
import model
import scoring
from exercises import EXERCISES, check, checks_countdown, experiment_prompt_mask, experiment_remasking, get
from exercises.__main__ import main, plug, unplug
from exercises.check import load_file

NUMBERS = [e.number for e in EXERCISES]


@pytest.mark.parametrize("number", NUMBERS)
def test_the_project_passes_every_check(number):
    result = check(number, solution=True)
    assert result.passed, result.message
    assert "passed" in result.message


@pytest.mark.parametrize("number", NUMBERS)
def test_untouched_stubs_are_not_implemented_yet(number):
    result = check(number)
    assert not result.passed
    assert "not implemented yet" in result.message and get(number).path.name in result.message
    assert "Traceback" not in result.message


@pytest.mark.parametrize("number", NUMBERS)
def test_stubs_have_the_project_signatures(number):
    exercise = get(number)
    stub = load_file(exercise.path)
    for name, original in exercise.project().items():
        mine = getattr(stub, name)
        if inspect.isclass(original):
            methods = ["__init__"] + [m for m, f in vars(original).items() if callable(f) and not m.startswith("__")]
            for m in methods:
                assert inspect.signature(getattr(mine, m)) == inspect.signature(getattr(original, m)), (name, m)
        else:
            assert inspect.signature(mine) == inspect.signature(original), name
        assert all(word in inspect.getdoc(mine) for word in ("Example", "Hint")), name  # maths, shapes too


def test_there_are_at_least_12_exercises_in_pipeline_order():
    assert len(EXERCISES) >= 12 and NUMBERS == list(range(1, len(EXERCISES) + 1))


# -----------------------------------------------------------------------------
# Wrong versions a student might write. Each entry: (exercise, candidate, words the message must hold).


def rmsnorm_with(normalise):
    class RMSNorm(nn.Module):
        def __init__(self, dim, eps):
            super().__init__()
            self.eps, self.weight = eps, nn.Parameter(torch.empty(dim))

        def forward(self, x):
            return normalise(x, self.eps) * self.weight
    return RMSNorm


def rope_interleaved(x, cos, sin):
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def rope_sign_flipped(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([x2, -x1], dim=-1) * sin).to(x.dtype)


def rope_tables_every_index(T, head_dim, theta, device):
    inv_freq = 1.0 / theta ** (torch.arange(head_dim // 2, dtype=torch.float32) / head_dim)
    emb = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq).repeat(1, 2)
    return emb.cos(), emb.sin()


def attention_with(mask_queries=False, scale=True, causal=False):
    def eager_attention(q, k, v, key_mask):
        scores = q @ k.transpose(-2, -1) / (math.sqrt(q.size(-1)) if scale else 1.0)
        if key_mask is not None:
            where = key_mask[:, None, :, None] if mask_queries else key_mask[:, None, None, :]
            scores = scores.masked_fill(~where, torch.finfo(scores.dtype).min)
        if causal:
            scores = scores.masked_fill(torch.ones(q.size(2), q.size(2)).triu(1).bool(), -torch.inf)
        return scores.softmax(-1) @ v
    return eager_attention


def forward_process_with(one_t=False, above=False, eps_floor=True, in_place=False):
    def forward_process(x0, mask_id, eps=diffusion.EPS, generator=None):
        B, T = x0.shape
        t = torch.rand(1 if one_t else B, 1, generator=generator).expand(B, 1)
        p = (1 - eps) * t + eps if eps_floor else t
        u = torch.rand(B, T, generator=generator)
        is_masked = u > p if above else u < p
        if in_place:
            x0[is_masked] = mask_id
            return x0, is_masked, p
        return torch.where(is_masked, mask_id, x0), is_masked, p
    return forward_process


def loss_with(divide="answer", weight=True, restore_prompt=True, score_prompt=False, score_eos=True, item=False):
    def diffusion_loss(model, x0, prompt_lengths, mask_id, generator=None):
        B, T = x0.shape
        is_prompt = torch.arange(T)[None, :] < prompt_lengths[:, None]
        xt, is_masked, p = diffusion.forward_process(x0, mask_id, generator=generator)
        scored = is_masked if score_prompt else is_masked & ~is_prompt
        scored = scored if score_eos else scored & (x0 != model.config.eos_token_id)
        xt = torch.where(is_prompt, x0, xt) if restore_prompt else xt
        ce = diffusion.masked_token_ce(model(xt), x0, scored) / (p if weight else 1.0)
        per_row = {"answer": (T - prompt_lengths).clamp(min=1).float(), "T": float(T)}
        loss = ce.sum() / scored.sum() if divide == "masked" else (ce.sum(1) / per_row[divide]).mean()
        return loss.item() if item else loss
    return diffusion_loss


def plan_with(extra_last=False, floor_only=False, off_by_one=False):
    def commit_plan(n_masked, steps):
        base, extra = n_masked[:, None] // steps, n_masked[:, None] % steps
        s = torch.arange(steps)[None, :]
        if floor_only:
            return base.expand(-1, steps)
        return base + ((s >= steps - extra) if extra_last else (s <= extra) if off_by_one else (s < extra)).long()
    return commit_plan


def top_k_with(same_k=False, lowest=False, threshold=False):
    def _top_k_per_row(scores, k):
        if threshold:  # >= the k-th largest score: takes every tie
            kth = scores.sort(-1, descending=True).values.gather(-1, (k[:, None] - 1).clamp(min=0))
            return (scores >= kth) & (k[:, None] > 0)
        rank = scores.argsort(-1, descending=not lowest).argsort(-1)
        return rank < (k[:1, None] if same_k else k[:, None])
    return _top_k_per_row


def gumbel_with(float32=False, inverse_power=False, always=False, exp_first=False):
    def add_gumbel_noise(logits, temperature, generator=None):
        if temperature == 0 and not always:
            return logits
        dtype = torch.float32 if float32 else torch.float64
        numerator = logits.exp().to(dtype) if exp_first else logits.to(dtype).exp()
        u = torch.rand(logits.shape, dtype=dtype, generator=generator)
        return numerator / (-torch.log(u)) ** (1 / temperature if inverse_power else temperature)
    return add_gumbel_noise


def advantages_with(always_std=False, batch_mean=False):
    def group_advantages(rewards, group_size, scale_by_std=False):
        r = rewards.view(-1, group_size)
        a = rewards - rewards.mean() if batch_mean else (r - r.mean(1, keepdim=True)).view(-1)
        return a / (r.std(1, keepdim=True) + 1e-4).repeat_interleave(group_size) if always_std or scale_by_std else a
    return group_advantages


def prompt_mask_global(seed, step, j, shape, p_mask_prompt, device):
    return torch.rand(shape) < p_mask_prompt


def prompt_mask_without_j(seed, step, j, shape, p_mask_prompt, device):
    return grpo.prompt_mask(seed, step, 0, shape, p_mask_prompt, device)


def logps_with(mask_completion=True, shift=0, attention=True, no_grad=False):
    def sequence_logps(model, ro, is_prompt_masked, mask_id, rows=slice(None)):
        prompt = torch.where(is_prompt_masked[rows], mask_id, ro.prompt_ids[rows])
        ids = ro.completion_ids[rows]
        x = torch.cat([prompt, torch.full_like(ids, mask_id) if mask_completion else ids], dim=1)
        att = torch.cat([ro.prompt_attention[rows], torch.ones_like(ids)], dim=1)
        P, C = prompt.size(1), ids.size(1)
        with torch.set_grad_enabled(not no_grad):
            logits = model(x, att if attention else None)[:, P - shift:P - shift + C]
            return F.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
    return sequence_logps


def grpo_loss_with(kl_sign=1, clip=torch.min, per_sequence=False, stats=True):
    def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps, beta, n_tokens):
        ratio, A = torch.exp(logp - old_logp), advantages[:, None]
        unclipped, clipped = ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A
        delta = kl_sign * (ref_logp - logp)
        kl = torch.exp(delta) - delta - 1
        per_token = (-clip(unclipped, clipped) + beta * kl) * mask
        loss = (per_token.sum(1) / mask.sum(1)).mean() if per_sequence else per_token.sum() / n_tokens
        return loss, ({"kl": (kl.detach() * mask).sum().item(),
                       "clipped": ((clipped < unclipped).float() * mask).sum().item()} if stats else {})
    return grpo_loss


class LoRAMergeWithoutScale(lora.LoRALinear):
    def merged_weight(self):
        return self.weight + self.lora_B @ self.lora_A


class LoRAInverseScale(lora.LoRALinear):
    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) / self.scaling


class LoRACopiesWeight(lora.LoRALinear):
    def __init__(self, linear, r, alpha, dropout=0.0, generator=None):
        super().__init__(linear, r, alpha, dropout, generator)
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)


class LoRAAlwaysOn(lora.LoRALinear):
    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


def safe_eval_with_eval(expr):
    return eval(expr)  # the mistake under test: never run model output


def safe_eval_without_length_bound(expr):
    try:
        parser = scoring._Parser(scoring._tokens(expr))
        value = parser.expression(0)
    except scoring._Invalid:
        return None
    return value if parser.i == len(parser.tokens) else None


def countdown_with_a_set(expr, numbers, target):
    value = scoring.safe_eval(expr)
    used = {int(n) for n in __import__("re").findall(r"\d+", expr)}
    return used == set(numbers) and value is not None and abs(value - target) < 1e-5


WRONG = [
    (1, rmsnorm_with(lambda x, eps: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, False, True) + eps)),
     ["LayerNorm"]),
    (1, rmsnorm_with(lambda x, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)),
     ["eps outside the square root"]),
    (1, rmsnorm_with(lambda x, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)), ["float16", "upcast"]),
    (2, {"apply_rope": rope_interleaved}, ["neighbouring pairs", "x_(i + Dh/2)"]),
    (2, {"apply_rope": rope_sign_flipped}, ["flipped the sign"]),
    (2, {"rope_tables": rope_tables_every_index}, ["arange(0, Dh, 2)"]),
    (2, {"apply_rope": lambda x, cos, sin: rope_sign_flipped(x.float(), cos, -sin)}, ["dtype torch.bfloat16"]),
    (3, attention_with(mask_queries=True), ["QUERIES", "KEYS"]),
    (3, attention_with(scale=False), ["sqrt(Dh)"]),
    (3, attention_with(causal=True), ["causal"]),
    (4, forward_process_with(one_t=True), ["the same p", "one t"]),
    (4, forward_process_with(above=True), ["its own rate p"]),
    (4, forward_process_with(eps_floor=False), ["[eps, 1]"]),
    (4, forward_process_with(in_place=True), ["changed its input `x0` in place"]),
    (5, loss_with(divide="masked"), ["number of masked tokens"]),
    (5, loss_with(weight=False), ["1/p"]),
    (5, loss_with(item=True), ["scalar tensor with a gradient"]),
    (6, loss_with(restore_prompt=False), ["noised the prompt"]),
    (6, loss_with(divide="T"), ["T - P"]),
    (6, loss_with(score_eos=False), ["EOS padding out"]),
    (6, loss_with(score_prompt=True), ["scored the masked prompt tokens"]),
    (7, plan_with(extra_last=True), ["LAST steps"]),
    (7, plan_with(floor_only=True), ["sums to", "not 1"]),
    (7, plan_with(off_by_one=True), ["sums to"]),
    (8, top_k_with(same_k=True), ["row 1 must select k[1] = 0"]),
    (8, top_k_with(lowest=True), ["HIGHEST"]),
    (8, top_k_with(threshold=True), ["must select", "it selects"]),
    (9, gumbel_with(float32=True), ["float64"]),
    (9, gumbel_with(inverse_power=True), ["frequencies", "power temperature"]),
    (9, gumbel_with(always=True), ["temperature 0 means greedy"]),
    (9, gumbel_with(exp_first=True), ["BEFORE exp"]),
    (10, advantages_with(always_std=True), ["divided by the std although scale_by_std is False"]),
    (10, advantages_with(batch_mean=True), ["must sum to 0", "each group's own mean"]),
    (11, {"prompt_mask": prompt_mask_global}, ["global random generator"]),
    (11, {"prompt_mask": prompt_mask_without_j}, ["another inner update j"]),
    (11, {"sequence_logps": logps_with(mask_completion=False)}, ["masks the WHOLE completion"]),
    (11, {"sequence_logps": logps_with(shift=1)}, ["GPT's shift"]),
    (11, {"sequence_logps": logps_with(attention=False)}, ["attention mask"]),
    (11, {"sequence_logps": logps_with(no_grad=True)}, ["carry the gradient"]),
    (12, grpo_loss_with(kl_sign=-1), ["flipped the KL's sign"]),
    (12, grpo_loss_with(clip=torch.max), ["max instead of min"]),
    (12, grpo_loss_with(per_sequence=True), ["averaged each sequence first"]),
    (12, grpo_loss_with(stats=False), ["stats", "'clipped'", "'kl'"]),
    (13, LoRAMergeWithoutScale, ["merged without the scale alpha / r"]),
    (13, LoRAInverseScale, ["r / alpha"]),
    (13, LoRACopiesWeight, ["must be linear.weight itself"]),
    (13, LoRAAlwaysOn, ["enabled = False"]),
    (14, {"safe_eval": safe_eval_with_eval}, ["called eval()", "untrusted"]),
    (14, {"safe_eval": safe_eval_without_length_bound}, ["over the bound of 200", "expected None"]),
    (14, {"countdown_correct": countdown_with_a_set}, ["7 used twice", "expected False, got True"]),
]


@pytest.mark.parametrize("number, candidate, words", WRONG, ids=[f"{n:02d}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_checks_catch_the_mistakes_students_make(number, candidate, words):
    result = check(number, candidate=candidate)
    assert not result.passed, f"exercise {number} accepted a wrong version"
    assert "FAILED" in result.message and "Traceback" not in result.message
    for word in words:
        assert word in result.message, result.message


def test_every_exercise_has_at_least_two_wrong_versions():
    assert all(sum(n == number for n, _, _ in WRONG) >= 2 for number in NUMBERS)


def test_a_checker_that_never_returns_is_stopped(monkeypatch):
    monkeypatch.setattr(checks_countdown, "TIME_LIMIT", 0.3)

    def hangs_on_powers(expr):
        while "**" in expr:
            pass
        return scoring.safe_eval(expr)

    result = check(14, candidate={"safe_eval": hangs_on_powers})
    assert not result.passed and "did not return within" in result.message and "2**3" in result.message


def test_a_crash_quotes_the_line_and_the_call():
    result = check(7, candidate=lambda n_masked, steps: n_masked // 0.0 + undefined_name)  # noqa: F821
    assert not result.passed and "raised NameError" in result.message and "call: commit_plan(" in result.message


# -----------------------------------------------------------------------------
# The command line, plugging into training, the experiments


def test_command_line_exit_codes(capsys):
    assert main(["check", "07", "--solution"]) == 0
    assert main(["check", "7"]) == 1
    assert "not implemented yet" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="numbered 01 to"):
        main(["check", "99"])
    assert main(["run", "06", "--stage", "sft"]) == 1  # the stub fails its check: no training
    assert "not implemented yet" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="plugs into --stage grpo, not .sft."):
        main(["run", "10", "--stage", "sft"])
    with pytest.raises(SystemExit, match="does not plug into training"):
        main(["run", "05", "--stage=pretrain"])


def test_run_adds_the_keys_an_exercise_needs_for_its_stage_unless_given(monkeypatch):
    """Exercise 06's loss leaves out SFT's drill rows, so `run 06 --stage sft` turns them off; exercise 13's
    LoRA needs --lora_r > 0. A key the student gives wins; other stages get nothing added."""
    import train
    argvs = []
    monkeypatch.setattr(train, "main", argvs.append)
    for args in (["06", "--stage", "sft", "--steps=1"], ["06", "--stage=pretrain", "--steps=1"],
                 ["13", "--stage", "grpo", "--lora_r=4"], ["13", "--stage", "sft"]):
        assert main(["run", "--force", *args]) == 0  # --force: the stubs fail their checks
    assert argvs == [["--stage", "sft", "--steps=1", "--trace_drills=0", "--drill_share=0"],
                     ["--stage", "pretrain", "--steps=1"],
                     ["--stage", "grpo", "--lora_r=4"],
                     ["--stage", "sft", "--lora_r=8"]]

def test_plugged_in_code_is_what_training_calls(tmp_path):
    """exercise 06's diffusion_loss is imported by name into pretrain.py: plug() must replace it there."""
    import train

    calls, original = [], diffusion.diffusion_loss

    def diffusion_loss(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    replaced = plug(get(6), SimpleNamespace(diffusion_loss=diffusion_loss))
    try:
        train.main(["--stage", "sft", "--steps=2", "--batch_size=2", "--n_per_task=2", "--sample_every=0",
                    "--dtype=float32", f"--out_dir={tmp_path}"])
    finally:
        unplug(replaced)
    assert len(calls) == 2
    assert __import__("pretrain").diffusion_loss is diffusion.diffusion_loss  # put back


def test_the_experiments_run_at_a_reduced_size():
    rows = experiment_remasking.main(["--questions_per_task=1", "--group_size=2", "--gen_length=32",
                                      "--temperatures=0.9", "--dtype=float32"])
    assert len(rows) == 2 and all(0 <= row["zero-std groups"] <= 1 for row in rows)
    rows = experiment_prompt_mask.main(["--questions_per_task=1", "--group_size=1", "--gen_length=32", "--masks=2",
                                        "--rates=0,0.5", "--dtype=float32"])
    assert rows[0]["std across masks"] == 0 and rows[0]["rank corr"] == pytest.approx(1.0)
    assert rows[1]["logp per token"] < rows[0]["logp per token"]  # hiding half the prompt costs likelihood
