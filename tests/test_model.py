"""model.py: LLaDA-8B layout on the meta device, forward numerics, and the three attention kernels."""
import math

import pytest
import torch

from model import Config, Model, apply_rope, rope_tables

LLADA_8B_PARAMS = 8_015_581_184


# The small model (tests/conftest.py) made wider: 4 heads of 16, a context of 64 tokens.
WIDE = dict(d_model=64, n_heads=4, n_kv_heads=4, mlp_hidden_size=96, max_sequence_length=64)
FLEX_SAFE = dict(WIDE, n_heads=2, n_kv_heads=2)  # head_dim 32: flex on CPU refuses smaller heads


def test_llada_8b_on_meta_device_has_official_keys_and_shapes(shared):
    config = Config.from_pretrained(shared / "data" / "llada" / "config.json")
    with torch.device("meta"):
        model = Model(config)
    sd = model.state_dict()
    assert len(sd) == 291
    assert sum(t.numel() for t in sd.values()) == LLADA_8B_PARAMS
    expected = {"model.transformer.wte.weight": (126464, 4096), "model.transformer.ln_f.weight": (4096,),
                "model.transformer.ff_out.weight": (126464, 4096)}
    for i in range(32):
        b = f"model.transformer.blocks.{i}."
        expected.update({b + "attn_norm.weight": (4096,), b + "ff_norm.weight": (4096,),
                         b + "q_proj.weight": (4096, 4096), b + "k_proj.weight": (4096, 4096),
                         b + "v_proj.weight": (4096, 4096), b + "attn_out.weight": (4096, 4096),
                         b + "ff_proj.weight": (12288, 4096), b + "up_proj.weight": (12288, 4096),
                         b + "ff_out.weight": (4096, 12288)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert config.mask_token_id == 126336 and config.eos_token_id == 126081 and config.rope_theta == 500000.0


def test_preset_matches_official_config(shared):
    official = Config.from_pretrained(shared / "data" / "llada")  # a directory works too
    assert Config.preset("llada-8b") == official


def test_config_refuses_unsupported_fields(tmp_path):
    (tmp_path / "config.json").write_text('{"d_model": 64, "n_heads": 4, "weight_tying": true}')
    with pytest.raises(ValueError, match="weight_tying"):
        Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Config.from_pretrained(tmp_path / "config.json")
    with pytest.raises(ValueError, match="unknown model preset"):
        Config.preset("llada-70b")


def test_forward_matches_written_out_llada_math(tiny_model):
    """The forward pass re-derived from the LLaDA architecture (Llama-style, bidirectional), op by op, in the test."""
    torch.manual_seed(0)
    model = tiny_model(seed=1, attn_impl="eager", **WIDE)
    cfg = model.config
    with torch.no_grad():  # non-trivial norm weights so their placement is tested
        for name, p in model.named_parameters():
            if "norm" in name or "ln_f" in name:
                p.uniform_(0.5, 1.5)
    ids = torch.randint(0, 64, (2, 10))
    tr = model.transformer

    def rms(x, w):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)) * w

    x = tr.wte.weight[ids]
    T, Dh = 10, 16
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, Dh, 2).float() / Dh)
    ang = torch.outer(torch.arange(T).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rot = lambda t: torch.cat([-t[..., Dh // 2:], t[..., : Dh // 2]], -1)  # noqa: E731
    for blk in tr.blocks:
        h = rms(x, blk.attn_norm.weight)
        q, k, v = (w(h).view(2, T, 4, Dh).transpose(1, 2) for w in (blk.q_proj, blk.k_proj, blk.v_proj))
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(Dh), -1) @ v
        x = x + blk.attn_out(att.transpose(1, 2).reshape(2, T, 64))
        h = rms(x, blk.ff_norm.weight)
        x = x + blk.ff_out(torch.nn.functional.silu(blk.ff_proj(h)) * blk.up_proj(h))
    expected = tr.ff_out(rms(x, tr.ln_f.weight))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, rtol=1e-5, atol=1e-5)


def test_rope_is_a_rotation_that_preserves_norms_and_relative_positions():
    cos, sin = rope_tables(8, 16, 10000.0, torch.device("cpu"))
    q = torch.randn(1, 1, 8, 16)
    assert torch.allclose(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # <R_m q, R_n k> depends only on m - n: shift both by the same offset.
    same = torch.randn(16).expand(1, 1, 8, 16)
    r = apply_rope(same, cos, sin)[0, 0]
    assert torch.allclose(r[1] @ r[3], r[4] @ r[6], atol=1e-4)


@pytest.mark.parametrize("padded", [False, True])
def test_three_attention_implementations_agree(padded, tiny_model):
    torch.manual_seed(0)
    model = tiny_model(**FLEX_SAFE)
    ids = torch.randint(0, 64, (3, 24))
    mask = torch.ones(3, 24, dtype=torch.long)
    if padded:
        mask[0, :5] = 0
        mask[2, :11] = 0
    logits = {}
    for impl in ("eager", "sdpa", "flex"):
        model.config.attn_impl = impl
        with torch.no_grad():
            logits[impl] = model(ids, mask if padded else None)
    for impl in ("sdpa", "flex"):
        rel = (logits[impl] - logits["eager"]).norm() / logits["eager"].norm()
        assert rel < 1e-5, (impl, rel.item())
    assert torch.isfinite(logits["eager"]).all()  # padded query rows still produce numbers


def test_flex_on_cpu_refuses_heads_it_computes_wrong(tiny_model):
    model = tiny_model(**WIDE)  # head_dim 16: compiled flex gave NaN at length 24 on an AVX2 CPU
    model.config.attn_impl = "flex"
    with torch.no_grad(), pytest.raises(RuntimeError, match="needs head_dim >= 32"):
        model(torch.randint(0, 64, (1, 24)))


def test_padded_keys_are_ignored(tiny_model):
    """Changing the token under a padded position must not change any real position's logits."""
    torch.manual_seed(0)
    for impl in ("eager", "sdpa"):
        model = tiny_model(attn_impl=impl, **WIDE)
        ids = torch.randint(0, 64, (1, 12))
        mask = torch.ones(1, 12, dtype=torch.long)
        mask[0, :4] = 0
        other = ids.clone()
        other[0, :4] = (other[0, :4] + 7) % 64
        with torch.no_grad():
            a, b = model(ids, mask), model(other, mask)
        torch.testing.assert_close(a[:, 4:], b[:, 4:], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model(ids)[:, 4:], model(other)[:, 4:])  # without the mask it matters


def test_flex_refuses_training_on_cpu(tiny_model):
    model = tiny_model(attn_impl="flex", **WIDE)
    with pytest.raises(RuntimeError, match="no backward pass on CPU"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_too_long_input_is_refused_with_its_length(tiny_model):
    model = tiny_model(**WIDE)
    with pytest.raises(ValueError, match="length 65 exceeds the model's context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_init_is_seeded_and_norms_start_at_one(tiny_model):
    a, b = tiny_model(seed=3), tiny_model(seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert torch.all(a.transformer.ln_f.weight == 1)


def test_activation_checkpointing_changes_memory_not_results(tiny_model):
    """Recomputing each block in backward gives the same loss and the same gradients, and saves fewer
    tensors for backward (only the blocks' inputs, then one block at a time)."""
    model = tiny_model(n_layers=4)
    x = torch.randint(0, 60, (2, 40))
    attention = torch.ones(2, 40)
    attention[0, :5] = 0  # left padding, as in a GRPO batch

    def run(checkpointing):
        model.train()
        model.zero_grad()
        model.checkpointing = checkpointing
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(x, attention).float().pow(2).mean()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], sum(saved)

    plain_loss, plain_grads, plain_saved = run(False)
    loss, grads, saved = run(True)
    assert loss == plain_loss
    for a, b in zip(plain_grads, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert saved < plain_saved / 2
