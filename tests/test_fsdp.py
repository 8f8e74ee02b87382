"""FSDP (--fsdp=true, distributed.shard: PyTorch's fully_shard) on 2 CPU processes (gloo) against the
plain 1-process run with the same global batch: the same losses, rewards and weights up to float
rounding, and checkpoints that hold the whole, unsharded state, so a run moves between FSDP on 2
processes and 1 plain process in both directions.

What runs here, on CPU and gloo: SFT with gradient accumulation (a reduce-scatter per micro-batch) and
with activation checkpointing; GRPO's rollouts, no-grad log-probs of the policy and of the sharded
reference copy, and its updates; gathering the whole state into ckpt.pt, --export=DIR and
--export=FILE.pt; restoring a checkpoint into the shards. What these tests leave out: NCCL and GPUs
(none here), bf16 weights (they compare in fp32: bf16 would round the two runs differently), and
several machines.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

import distributed
from checkpoint import load_pretrained
from common import ConfigError, parse_config
from grpo import GRPOConfig
from memory import memory_plan
from model import Config
from sft import SFTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed import SFT, assert_same_weights, losses, override, train, weights  # noqa: E402
from test_distributed_grpo import GRPO, assert_same_grpo_weights  # noqa: E402

# A fixed LR schedule (--decay_steps): --steps only says where a run stops, so 2 steps + 1 resumed
# step follow the schedule of 3 uninterrupted ones.
SFT_RUN = override(SFT, decay_steps=8)


def log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


# -- SFT: FSDP on 2 processes, a checkpoint that moves between FSDP and one plain process -----------


def test_sft_under_fsdp_equals_one_process_and_its_checkpoints_resume_either_way(tmp_path):
    """plain:      1 process, 3 steps: the reference.
    sharded:       2 processes --fsdp, 2 steps in micro-batches of 1 row (2 reduce-scatters a step).
    resumed on 1:  sharded's ckpt.pt, step 3 on 1 plain process            -> plain's weights
    resumed on 2:  the same ckpt.pt, step 3 on 2 processes --fsdp, with activation checkpointing, and
                   --export=DIR gathered from the shards                   -> plain's weights"""
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    train(plain, SFT_RUN)
    train(sharded, override(SFT_RUN, steps=2, fsdp="true", micro_batch=1), nproc=2)
    assert losses(sharded) == pytest.approx(losses(plain)[:2], rel=1e-5)

    # The file an FSDP run writes is the one a plain run writes: whole tensors, optimizer.state_dict()'s
    # numbering and groups, the same keys and shapes.
    mine, theirs = (torch.load(d / "ckpt.pt", weights_only=True) for d in (sharded, plain))
    assert mine.keys() == theirs.keys() and mine["step"] == 2
    assert {k: v.shape for k, v in mine["model"].items()} == {k: v.shape for k, v in theirs["model"].items()}
    same_but_lr = [[{**group, "lr": None} for group in ckpt["optimizer"]["param_groups"]] for ckpt in (mine, theirs)]
    assert same_but_lr[0] == same_but_lr[1]  # (the lr is that of step 2 in one, of step 3 in the other)
    assert {i: {k: v.shape for k, v in s.items()} for i, s in mine["optimizer"]["state"].items()} == \
           {i: {k: v.shape for k, v in s.items()} for i, s in theirs["optimizer"]["state"].items()}

    on_two = tmp_path / "on-two"
    on_two.mkdir()
    (on_two / "ckpt.pt").write_bytes((sharded / "ckpt.pt").read_bytes())
    train(sharded, override(SFT_RUN, resume="true"))  # on 1 process, without --fsdp
    train(on_two, override(SFT_RUN, resume="true", fsdp="true", checkpointing="true",
                           export=tmp_path / "export"), nproc=2)
    for resumed in (sharded, on_two):
        assert_same_weights(weights(resumed), weights(plain))
        assert losses(resumed)[-1:] == pytest.approx(losses(plain)[-1:], rel=1e-5)
    exported = load_pretrained(tmp_path / "export").state_dict()
    assert_same_weights(exported, weights(on_two))


# -- GRPO: FSDP on 2 processes (the policy and the frozen reference copy sharded) -----------------


def test_grpo_under_fsdp_equals_one_process(tmp_path):
    """2 steps, 2 questions x 3 rows: rank 0 samples question 0, rank 1 question 1, every forward of
    the rollout, the log-probs and the update all-gathering each block's weights. The rewards come
    out identical, the losses and KL equal to float rounding, and so do the weights."""
    run = override(GRPO[1:], steps=2)  # tests/test_distributed_grpo.py's run, without "train.py"
    one, two = tmp_path / "one", tmp_path / "two"
    train(one, run)
    train(two, override(run, fsdp="true", export=tmp_path / "two.pt"), nproc=2)
    for a, b in zip(log(one), log(two), strict=True):
        rewards = [k for k in a if k.startswith(("reward", "accuracy", "zero_std", "completion_length", "rollout"))]
        assert {k: b[k] for k in rewards} == {k: a[k] for k in rewards}
        # The loss (~1e-3 here) is what is left of per-token terms of ~0.1 that cancel over each group
        # (advantages sum to 0), the KL a squared difference of log-probs: float rounding reaches both
        # at ~1e-5 relative, under DDP too (measured: DDP 6e-6 to 8e-6, FSDP 1.2e-5; FSDP 1.9e-5, 1.5e-7
        # absolute, on an AVX-512 CPU, whose kernels sum in another order), so 1e-6 absolute.
        for key in ("loss", "kl", "clip_ratio"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert any(row["loss"] != 0 for row in log(one))  # the runs learn something to compare
    assert_same_grpo_weights(weights(two), weights(one))
    export = torch.load(tmp_path / "two.pt", weights_only=True)  # --export=FILE.pt: gathered, slim
    assert "optimizer" not in export and export["model"].keys() == weights(two).keys()
    assert all(torch.equal(export["model"][k], v) for k, v in weights(two).items())


# -- in one process ------------------------------------------------------------------------------


def test_fsdp_refuses_what_it_cannot_run():
    with pytest.raises(ConfigError, match=r"^--fsdp=true with --lora_r=8: FSDP is for full fine-tuning"):
        parse_config(SFTConfig, ["--fsdp=true", "--lora_r=8"])
    with pytest.raises(ConfigError, match=r"^--threshold=0.9 with --fsdp=true: parallel decoding ends each"):
        parse_config(GRPOConfig, ["--fsdp=true", "--threshold=0.9"])
    assert parse_config(GRPOConfig, ["--fsdp=true", "--cache=dual"]).fsdp  # the same forwards on every process


def test_on_one_process_fsdp_is_a_no_op(tiny_model):
    model = tiny_model()
    assert distributed.wrap(model, fsdp=True) is model and not distributed.is_sharded(model)


def test_optimizer_state_is_renumbered_by_position_and_back(tiny_model):
    """torch.distributed.checkpoint names the parameters; the files number them as optimizer.state_dict()."""
    model = tiny_model()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:]}])
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    numbered = optimizer.state_dict()
    names = distributed._names(model, optimizer)
    assert names[:2] == [name for name, _ in model.named_parameters()][:2]
    by_name = distributed._renumber(numbered, dict(enumerate(names)))
    assert by_name["param_groups"][0]["params"] == names[:2] and set(by_name["state"]) == set(names)
    assert distributed._renumber(by_name, {n: i for i, n in enumerate(names)}) == numbered


def test_memory_plan_divides_the_state_by_the_processes(monkeypatch):
    """d1's GRPO run on LLaDA-8B with full fine-tuning: 16 GB of weights, 16 of the reference copy and
    48 of grads and AdamW state need more than an 80 GB card; FSDP on 8 processes holds 1/8 of each,
    plus the groups it gathers while they run (the embedding and head, 2 blocks)."""
    llada = Config.preset("llada-8b")
    cfg = parse_config(GRPOConfig, ["--preset=d1", "--task=gsm8k", "--lora_r=0", "--fsdp=true"])
    alone = memory_plan(llada, "grpo", cfg, weights_dtype=torch.bfloat16)
    monkeypatch.setenv("WORLD_SIZE", "8")  # what torchrun --nproc_per_node=8 sets
    sharded = memory_plan(llada, "grpo", cfg, weights_dtype=torch.bfloat16)
    block = 4 * 4096**2 + 3 * 4096 * 12288 + 2 * 4096
    gathered = 2 * 126464 * 4096 + 4096 + 2 * block  # the root group (embedding, final norm, head) + 2 blocks
    assert sharded.weights == alone.weights // 8 + gathered * 2
    assert sharded.optimizer == alone.optimizer // 8 + gathered * 2  # + their gradients before the reduce-scatter
    assert sharded.reference == sharded.weights
    assert alone.total > 80 * 2**30 > sharded.total and "/ 8 processes (FSDP)" in str(sharded)
    ddp = parse_config(GRPOConfig, ["--preset=d1", "--task=gsm8k", "--lora_r=0"])
    assert memory_plan(llada, "grpo", ddp, weights_dtype=torch.bfloat16).weights == alone.weights  # DDP: whole
