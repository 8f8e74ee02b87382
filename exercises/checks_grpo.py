"""
Checks of exercises 10-13: diffu-GRPO's pieces (grpo.py: group advantages and the clipped loss with
the k3 KL; estimators.py: the one-step log-prob estimator and its prompt mask) and LoRA (lora.py).
"""

import copy
from types import SimpleNamespace

import torch
import torch.nn as nn

import estimators as ref_estimators
import grpo as ref
import lora as ref_lora
from .check import Call, attempt, expect, require, small_model

MASK, EOS = 60, 61  # small_model's [MASK] and EOS ids


# -----------------------------------------------------------------------------
# 10 group advantages


def check_advantages(s):
    """group_advantages(rewards, group_size, scale_by_std) for 2 to 4 groups of 2 to 6 consecutive
    rows: each group's advantages sum to 0, an all-equal group gets 0, and the values equal
    grpo.group_advantages, divided by the group's std (+ 1e-4) only when scale_by_std is True."""
    g = torch.Generator().manual_seed(6)
    cases = [(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), 6),
             (torch.tensor([0.3, 0.3, 0.3, 1.1, 0.1, 0.2, 0.5, 0.5, 0.0]), 3),
             (torch.rand(8, generator=g), 2)]
    for rewards, G in cases:
        for scale in (False, True):
            call = Call(ref.group_advantages, rewards, G, scale_by_std=scale)
            got = call.run(s.group_advantages)
            if isinstance(got, torch.Tensor) and got.shape == rewards.shape:
                sums = got.view(-1, G).sum(1)
                i = int((sums.abs() > 1e-5).float().argmax())  # the first group that does not sum to 0
                require(sums[i].abs() <= 1e-5, f"the advantages of a group must sum to 0; group {i} (rows {G * i} "
                        f"to {G * i + G - 1}) sums to {sums[i].item():.3g}", call,
                        hint="subtract each group's own mean: rewards.view(-1, G) minus its mean over dim 1")
            expect(call, call.run(ref.group_advantages), got, mistakes=_advantage_mistakes(rewards, G, scale))


def _advantage_mistakes(rewards, G, scale):
    r = rewards.view(-1, G)  # (questions, G)
    centred = r - r.mean(1, keepdim=True)
    if scale:
        return {"left out the std division that scale_by_std=True asks for": centred.view(-1),
                "used the population std (correction 0); the project uses torch's default, n - 1":
                    (centred / (r.std(1, keepdim=True, correction=0) + 1e-4)).view(-1)}
    return {"divided by the std although scale_by_std is False (d1 runs without it)":
                (centred / (r.std(1, keepdim=True) + 1e-4)).view(-1),
            "grouped rows with a stride (view(G, -1)): a group's G completions are consecutive rows":
                (rewards.view(G, -1) - rewards.view(G, -1).mean(0)).view(-1)}


# -----------------------------------------------------------------------------
# 11 the one-step log-prob estimator


def check_one_step_logps(s):
    """prompt_mask(seed, step, j, shape, p_mask_prompt, device) is a (N, P) bool tensor, a pure function
    of (seed, step, j) (the same call gives the same mask and leaves torch's global RNG alone; another j
    or step gives another mask), masking at rate p (0, 0.15, 0.5, 1). sequence_logps(model, ro,
    is_prompt_masked, mask_id, rows) equals estimators.sequence_logps on a rollout with a left-padded prompt,
    for all rows and for rows=slice(1, 4), and its result carries the gradient."""
    shape = (200, 50)
    for p in (0.0, 0.15, 0.5, 1.0):
        call = Call(ref_estimators.prompt_mask, 1337, 3, 1, shape, p, "cpu")
        state = torch.get_rng_state()
        got = call.run(s.prompt_mask)
        require(torch.equal(state, torch.get_rng_state()), "prompt_mask drew from torch's global random generator; "
                "it must be a pure function of (seed, step, j)", call,
                hint="g = torch.Generator().manual_seed(mix_seed(seed, step, j)) (mix_seed is in common.py)")
        require(isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.shape == shape,
                f"the mask must be a bool tensor of shape {shape}", call)
        require(abs(got.float().mean().item() - p) < 0.02, f"each prompt token is masked with probability "
                f"p_mask_prompt = {p}; your mask covers {got.float().mean().item():.3f} of them", call)
        require(torch.equal(got, call.run(s.prompt_mask)), "two calls with the same (seed, step, j) gave different "
                "masks: the old, reference and current log-probs of an inner update must see the same mask", call)
    base = Call(ref_estimators.prompt_mask, 1337, 3, 1, shape, 0.5, "cpu")
    for step, j in ((3, 2), (4, 1)):
        other = Call(ref_estimators.prompt_mask, 1337, step, j, shape, 0.5, "cpu")
        require(not torch.equal(base.run(s.prompt_mask), other.run(s.prompt_mask)), "another inner update j (or "
                "another step) must draw another mask: each of the mu updates sees its own view of the prompt", other)

    model, ro = small_model(7).requires_grad_(True), _rollout()
    is_masked = ref_estimators.prompt_mask(1337, 0, 0, ro.prompt_ids.shape, 0.3, "cpu")
    for rows in (slice(None), slice(1, 4)):
        call = Call(ref_estimators.sequence_logps, model, ro, is_masked, MASK, rows)
        got = call.run(s.sequence_logps)
        require(isinstance(got, torch.Tensor) and got.requires_grad, "the log-probs must carry the gradient (the "
                "loss is differentiated through them): no torch.no_grad(), no .detach()", call)
        expect(call, call.run(ref_estimators.sequence_logps), got, mistakes=_logp_mistakes(model, ro, is_masked, rows))


def _rollout(N=5, P=6, C=7):
    """What eval.complete returns, reduced to what the estimator reads; row 0's prompt is left-padded."""
    g = torch.Generator().manual_seed(8)
    attention = torch.ones(N, P, dtype=torch.long)
    attention[0, :3] = 0
    return SimpleNamespace(prompt_ids=torch.randint(0, 50, (N, P), generator=g), prompt_attention=attention,
                           completion_ids=torch.randint(0, 50, (N, C), generator=g))


def _logp_mistakes(model, ro, is_masked, rows):
    def logps(mask_prompt=True, mask_completion=True, attention=True, shift=0):
        prompt = torch.where(is_masked, MASK, ro.prompt_ids) if mask_prompt else ro.prompt_ids
        completion = torch.full_like(ro.completion_ids, MASK) if mask_completion else ro.completion_ids
        x = torch.cat([prompt, completion], 1)[rows]
        att = torch.cat([ro.prompt_attention, torch.ones_like(completion)], 1)[rows]
        P, C = prompt.size(1), completion.size(1)
        with torch.no_grad():
            logits = model(x, att if attention else None)[:, P - shift: P - shift + C]
        return torch.log_softmax(logits, -1).gather(-1, ro.completion_ids[rows][..., None]).squeeze(-1)

    return {"fed the real completion tokens: the one-step estimator masks the WHOLE completion":
            logps(mask_completion=False),
            "ignored is_prompt_masked: put mask_id at the prompt positions it marks": logps(mask_prompt=False),
            "read the logits one position to the left (GPT's shift): in LLaDA logit i predicts token i": logps(shift=1),
            "left out the attention mask: prompt padding must be hidden (ro.prompt_attention, then ones)":
            logps(attention=False)}


# -----------------------------------------------------------------------------
# 12 the clipped surrogate with the k3 KL


def check_grpo_loss(s):
    """grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps, beta, n_tokens) on (4, 6) log-probs
    with ratios inside and outside [1 - eps, 1 + eps], advantages of both signs, a mask with zeros,
    beta 0 and 0.04: the loss, its gradient with respect to logp, and the stats 'kl' and 'clipped'
    (sums over the mask) equal grpo.grpo_loss's; with ref_logp == logp the kl stat is 0."""
    g = torch.Generator().manual_seed(9)
    logp = (torch.rand(4, 6, generator=g) * -3).requires_grad_(True)
    old = logp.detach() + torch.randn(4, 6, generator=g) * 0.5  # ratios from ~0.4 to ~2.5
    reference = logp.detach() + torch.randn(4, 6, generator=g) * 0.8  # large: k3 is then far from symmetric
    advantages = torch.tensor([0.8, -0.5, 0.3, -0.6])
    mask = torch.tensor([[1.0] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])  # up to the EOS
    n_tokens = mask.sum()
    for beta, ref_logp in ((0.04, reference), (0.0, reference), (0.04, logp.detach())):
        call = Call(ref.grpo_loss, logp, old, ref_logp, advantages, mask, 0.2, beta, n_tokens)
        expected, got = _loss_and_grad(call, ref.grpo_loss), _loss_and_grad(call, s.grpo_loss)
        expect(call, expected[0], got[0], what="loss",
               mistakes=_grpo_mistakes(logp.detach(), old, ref_logp, advantages, mask, 0.2, beta, n_tokens))
        expect(call, expected, got, what=("loss", "d loss / d logp", "stats"))


def _loss_and_grad(call, fn):
    """(loss value, gradient of the loss with respect to logp, stats) of one run of fn."""
    out = call.run(fn)
    require(isinstance(out, tuple) and len(out) == 2, "grpo_loss returns (loss, stats)", call)
    loss, stats = out
    require(isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad,
            "the loss must be a scalar tensor with a gradient (built from logp, no .item() or .detach())", call)
    attempt(loss.backward, call.text)
    return loss.detach(), call.last_args[0].grad, stats


def _grpo_mistakes(logp, old, ref_logp, advantages, mask, eps, beta, n_tokens):
    def loss(kl_sign=1, clip=torch.min, per_token=True, masked=True):
        ratio, A = torch.exp(logp - old), advantages[:, None]
        surrogate = -clip(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)
        delta = kl_sign * (ref_logp - logp)
        total = (surrogate + beta * (torch.exp(delta) - delta - 1)) * (mask if masked else 1.0)
        return total.sum() / n_tokens if per_token else ((total.sum(1) / mask.sum(1)).mean())

    return {"flipped the KL's sign: k3 uses delta = ref_logp - logp, exp(delta) - delta - 1": loss(kl_sign=-1),
            "took max instead of min: PPO keeps the smaller (pessimistic) of the clipped and unclipped terms":
            loss(clip=torch.max),
            "averaged each sequence first (the paper's equation); the project pools all tokens: sum / n_tokens":
            loss(per_token=False),
            "left out the mask: only tokens up to the first EOS enter the loss": loss(masked=False)}


# -----------------------------------------------------------------------------
# 13 LoRA


def check_lora(s):
    """LoRALinear(linear, r, alpha, dropout, generator) keeps linear's weight (the same Parameter,
    frozen), adds lora_A (r, in) and lora_B (out, r) = 0 (so it starts as the plain layer) and no other
    parameter; with random A and B its forward equals lora.LoRALinear's, the base layer's when
    `enabled` is False, and merged_weight() equals W + (alpha / r) B A."""
    g = torch.Generator().manual_seed(10)
    linear = nn.Linear(6, 5, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(5, 6, generator=g))  # drawn from g: the same inputs on every run
    x = torch.randn(3, 4, 6, generator=g)
    text = "LoRALinear(nn.Linear(6, 5, bias=False), r=2, alpha=8.0, dropout=0.0, generator=...)"
    layer = attempt(s.LoRALinear, text, linear, 2, 8.0, 0.0, torch.Generator().manual_seed(0))
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    require(shapes == {"weight": (5, 6), "lora_A": (2, 6), "lora_B": (5, 2)}, "the layer's parameters must be "
            f"weight (5, 6), lora_A (r, in) = (2, 6), lora_B (out, r) = (5, 2); yours: {shapes}",
            hint="keep the official key names: the checkpoint stores ...q_proj.weight, ...q_proj.lora_A/lora_B")
    require(layer.weight is linear.weight and not layer.weight.requires_grad, "self.weight must be linear.weight "
            "itself (the same Parameter: no copy), frozen with requires_grad_(False)")
    require(layer.lora_A.requires_grad and layer.lora_B.requires_grad, "lora_A and lora_B are what trains: "
            "they must require grad")
    call = Call(linear.forward, x, label="LoRALinear(...).forward at initialisation")
    expect(call, linear(x).detach(), call.run(layer), hint="lora_B starts at zero, so a new layer is exactly the "
                                                           "plain linear layer (training starts at the base model)")
    reference = ref_lora.LoRALinear(copy.deepcopy(linear), 2, 8.0, generator=g)  # the same W
    with torch.no_grad():
        for name in ("lora_A", "lora_B"):
            value = torch.randn(shapes[name], generator=g)
            getattr(layer, name).copy_(value)
            getattr(reference, name).copy_(value)
    W, A, B = linear.weight.detach(), reference.lora_A.detach(), reference.lora_B.detach()
    call = Call(linear.forward, x, label="LoRALinear(...).forward with random lora_A, lora_B")
    expect(call, call.run(reference), call.run(layer), mistakes={
        "scaled the update by r / alpha: the scale is alpha / r": x @ W.T + x @ A.T @ B.T * (2 / 8.0),
        "left out the scale alpha / r": x @ W.T + x @ A.T @ B.T})
    layer.enabled = False
    call = Call(linear.forward, x, label="LoRALinear(...).forward with enabled = False")
    expect(call, linear(x).detach(), call.run(layer), hint="with self.enabled False the layer is the base layer "
                                                           "(GRPO's reference policy runs this way)")
    layer.enabled = True
    call = Call(reference.merged_weight, label="LoRALinear(...).merged_weight")
    expect(call, call.run(reference.merged_weight), call.run(layer.merged_weight), mistakes={
        "merged without the scale alpha / r": W + B @ A, "merged with the scale r / alpha": W + B @ A * (2 / 8.0)})
