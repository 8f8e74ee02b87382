"""lora.py: zero-init adapters are a no-op, merge is exact, only adapters train, switching off restores."""
import pytest
import torch

from lora import LoRALinear, adapters_off, add_lora, lora_layers, merge_lora


def randomise_adapters(model):
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(0, 0.1)


def test_zero_initialised_adapters_leave_outputs_unchanged(tiny_model):
    model = tiny_model()
    ids = torch.randint(0, 40, (2, 9))
    before = model(ids)
    add_lora(model, r=4, alpha=8)
    torch.testing.assert_close(model(ids), before, rtol=0, atol=0)


def test_only_adapter_parameters_require_grad_and_keys_stay_official(tiny_model):
    model = add_lora(tiny_model(), targets=("q_proj", "v_proj"), r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.transformer.blocks.{i}.{m}.lora_{ab}" for i in range(2)
                         for m in ("q_proj", "v_proj") for ab in "AB"}
    keys = set(model.state_dict())
    assert "model.transformer.blocks.0.q_proj.weight" in keys  # the official key is untouched
    loss = model(torch.randint(0, 40, (2, 5))).sum()
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_switching_adapters_off_restores_base_outputs_exactly(tiny_model):
    model = tiny_model()
    ids = torch.randint(0, 40, (2, 9))
    base = model(ids)
    add_lora(model, r=4, alpha=8)
    randomise_adapters(model)
    adapted = model(ids)
    assert not torch.allclose(adapted, base)
    with adapters_off(model):
        torch.testing.assert_close(model(ids), base, rtol=0, atol=0)
    torch.testing.assert_close(model(ids), adapted, rtol=0, atol=0)  # back on afterwards


def test_merged_equals_unmerged(tiny_model):
    model = add_lora(tiny_model(), r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "attn_out",
                                                           "ff_proj", "up_proj", "ff_out"))
    randomise_adapters(model)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        unmerged = model(ids)
        merge_lora(model)
        merged = model(ids)
    assert not lora_layers(model)
    assert set(model.state_dict()) == set(tiny_model().state_dict())  # plain official keys again
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_unknown_target_is_refused(tiny_model):
    with pytest.raises(ValueError, match="unknown LoRA target"):
        add_lora(tiny_model(), targets=("o_proj",))


def test_dropout_only_touches_the_adapter_branch():
    layer = torch.nn.Linear(8, 8, bias=False)
    lora = LoRALinear(layer, r=2, alpha=4, dropout=0.5).train()
    x = torch.randn(3, 8)
    torch.testing.assert_close(lora(x), layer(x))  # B = 0: dropout cannot change anything yet


def test_adapters_stay_float32_on_a_bf16_base_so_small_updates_are_kept(tiny_model):
    """d1's lr of 3e-6 moves an adapter by far less than bf16's resolution; in float32 it moves."""
    model = tiny_model().to(torch.bfloat16)
    add_lora(model, targets=("q_proj",), r=4, alpha=8)
    layer = lora_layers(model)[0]
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
    x = torch.randn(2, 5, model.config.d_model, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16  # computed in the input's dtype
    before = layer.lora_A.detach().clone()
    layer.lora_B.data.fill_(0.01)  # a trained B, so that A gets a gradient
    layer(x).float().sum().backward()
    torch.optim.AdamW([layer.lora_A], lr=3e-6).step()
    assert (layer.lora_A != before).float().mean() > 0.9  # float32: the step moved nearly every entry
    # The same step on a bf16 copy of A: rounded away almost everywhere.
    bf16 = torch.nn.Parameter(before.to(torch.bfloat16))
    bf16.grad = layer.lora_A.grad.to(torch.bfloat16)
    torch.optim.AdamW([bf16], lr=3e-6).step()
    assert (bf16 != before.to(torch.bfloat16)).float().mean() < 0.1
    merged = merge_lora(model).transformer.blocks[0].q_proj.weight
    assert merged.dtype == torch.bfloat16
