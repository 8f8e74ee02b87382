"""GPU-only checks (skipped without CUDA): compiled FlexAttention forward AND backward agree with the
written-out softmax, a training step with flex runs, and a cached forward (model.KVCache) agrees with
every kernel. Run on a GPU machine with `python -m pytest tests/test_gpu.py -v`."""
import pytest
import torch

from diffusion import diffusion_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# The small model (tests/conftest.py) at GPU-sized widths: 4 heads of 64, 512 tokens of context.
GPU_SIZES = dict(d_model=256, n_heads=4, n_kv_heads=4, mlp_hidden_size=512, vocab_size=512, embedding_size=512,
                 max_sequence_length=512, mask_token_id=500)


@pytest.mark.parametrize("padded", [False, True])
def test_flex_forward_and_backward_match_eager_on_gpu(padded, tiny_model):
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (4, 256), device="cuda")
    mask = torch.ones(4, 256, dtype=torch.long, device="cuda")
    if padded:
        mask[1, :100] = 0
        mask[3, :17] = 0
    results = {}
    for impl in ("eager", "sdpa", "flex"):
        model = tiny_model(attn_impl=impl, **GPU_SIZES).cuda()
        logits = model(ids, mask if padded else None)
        (logits.float().square().mean()).backward()
        results[impl] = (logits.detach(), model.transformer.blocks[0].q_proj.weight.grad.clone())
    for impl in ("sdpa", "flex"):
        for a, b in zip(results[impl], results["eager"]):
            rel = ((a - b).norm() / b.norm()).item()
            assert rel < 1e-3, (impl, rel)  # TF32 / kernel differences on GPU, fp32 weights


def test_flex_training_step_in_bf16(tiny_model):
    model = tiny_model(attn_impl="flex", **GPU_SIZES).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 500, (8, 128), device="cuda")
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion_loss(model, x, torch.zeros(8, dtype=torch.long, device="cuda"), 500,
                                  generator=torch.Generator(device="cuda").manual_seed(0))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_a_cached_forward_with_flex_matches_eager_on_gpu(tiny_model):
    """model.KVCache with every kernel: the cached positions get the full forward's logits (nothing changed)."""
    from model import KVCache

    ids = torch.randint(0, 500, (4, 256), device="cuda")
    mask = torch.ones(4, 256, dtype=torch.long, device="cuda")
    mask[1, :100] = 0
    parts = {}
    for impl in ("eager", "sdpa", "flex"):
        model, cache = tiny_model(attn_impl=impl, **GPU_SIZES).cuda(), KVCache()
        with torch.no_grad():
            full = model(ids, mask, kv_cache=cache.fill())
            parts[impl] = model(ids[:, 128:160], mask, kv_cache=cache.use(128, 160))
        rel = ((parts[impl] - full[:, 128:160]).norm() / full[:, 128:160].norm()).item()
        assert rel < 1e-3, (impl, rel)
    for impl in ("sdpa", "flex"):
        assert ((parts[impl] - parts["eager"]).norm() / parts["eager"].norm()).item() < 1e-3, impl
