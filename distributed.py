"""
Several processes, one run: the few calls of torch.distributed the training stages and eval.py make
when torchrun starts them (PyTorch's own launcher; README, "Several GPUs and machines").

    torchrun --nproc_per_node=8 train.py --stage grpo ...      # 8 processes, one per GPU (NCCL)
    torchrun --nproc_per_node=2 train.py --stage pretrain ...  # 2 processes on a CPU (gloo)
    python train.py --stage grpo ...                            # one process: every call below is a no-op

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process's environment; setup() joins the
process group (NCCL on GPUs, gloo on CPUs) and gives each process its device (cuda:LOCAL_RANK).
The rule the stages follow: every process builds the whole step (the global batch, the questions,
the noise) from (seed, step), works on its own share of the rows, and the gradients and metrics are
summed across processes, so a run's numbers do not depend on how many processes ran it. Rank 0
alone prints, writes the metrics log and writes checkpoints.

Two ways to hold the model, chosen in one place (wrap):
    DDP (the default)   every process holds the whole model, its gradients and AdamW state
    FSDP (--fsdp=true)  each holds 1/N of them (shard): full fine-tuning of a model whose AdamW
                        state does not fit one GPU. Checkpoints still hold the whole, unsharded
                        state (full_state), so a run resumes on any N, with or without --fsdp.
"""
import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# PyTorch's FSDP and distributed-checkpoint modules are imported where --fsdp uses them: importing them
# adds ~1 s to the start of every process (every script, every test), which runs without it never need.
FSDP = "torch.distributed.fsdp"


def world() -> int:
    """How many processes run this job (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's number, 0 .. world() - 1 (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True in the process that prints and writes files (rank 0). Before setup() it reads torchrun's
    RANK, so a config error met by every process is reported once."""
    if not dist.is_initialized():
        return int(os.environ.get("RANK", "0")) == 0
    return rank() == 0


def launched_world() -> int:
    """How many processes torchrun started (its WORLD_SIZE; 1 without torchrun). Known before
    setup(), so configs and the memory plan can use it before anything is loaded."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True when torchrun started this process as one of several."""
    return launched_world() > 1


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this process's device: cuda:LOCAL_RANK on a
    GPU machine, else the device asked for. Without torchrun, the device unchanged."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def print_only_on_main():
    """Every process but rank 0 prints nothing: its standard output goes to os.devnull (its errors
    still reach standard error), so a run's log reads the same on 1 or 8 processes."""
    if not is_main():
        sys.stdout = open(os.devnull, "w")


def teardown():
    """Leave the process group (at the end of a run; harmless without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def my_rows(n_rows: int, what: str = "rows") -> slice:
    """This process's contiguous share of n_rows: rank r of N takes rows r*n/N .. (r+1)*n/N. The rows
    must split evenly (every process then runs the same number of forward and backward passes)."""
    n, r = world(), rank()
    check_split(n_rows, what, n)
    share = n_rows // n
    return slice(r * share, (r + 1) * share)


def check_split(n_rows: int, what: str = "rows", n: int | None = None):
    """Refuse (ValueError) n_rows that do not split evenly over n processes; n defaults to torchrun's
    WORLD_SIZE, known before setup(), so a config is checked before anything is loaded or written."""
    n = n or launched_world()
    if n_rows % n:
        raise ValueError(f"{n_rows} {what} do not split evenly over {n} processes; use a multiple of {n}")


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all processes (in place; returned for convenience)."""
    if world() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj) -> list:
    """[the obj of rank 0, of rank 1, ...]: picklable Python objects from every process."""
    if world() == 1:
        return [obj]
    gathered = [None] * world()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier():
    """Wait until every process gets here (e.g. rank 0 has written a checkpoint)."""
    if world() > 1:
        dist.barrier()


def wrap(model, fsdp=False):
    """What training calls forward on, chosen here once: the model sharded with FSDP (fsdp=True,
    the --fsdp key) or wrapped in DDP. One process: the model itself either way. Wrap before the
    optimizer is made (under FSDP it must hold the sharded parameters) and after LoRA is added."""
    return shard(model) if fsdp else ddp(model)


def ddp(model):
    """The model wrapped in DistributedDataParallel when several processes run (else the model):
    its backward averages the trainable parameters' gradients over the processes. Wrap after LoRA
    is added (only parameters that require grad are synchronised); forward through the wrapper in
    training, and through the model itself where no gradient is taken (rollouts, log-probs)."""
    if world() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[model_device(model).index] if model_device(model).type == "cuda"
                                   else None)


def shard(model):
    """The model under FSDP (PyTorch's fully_shard, "FSDP2") when several processes run (else the
    model): each transformer block, then the rest (embedding, final norm, head), becomes a group
    whose parameters, gradients and AdamW state are split over the N processes (DTensors, dim 0),
    1/N on each. A group's forward all-gathers its whole weights and frees them after it (the root
    group keeps its own until the next backward: a rollout's forwards gather it once); its backward
    all-gathers them again and reduce-scatters the gradients, averaged over the processes as DDP
    averages them.

        N = 2     block 0   rows 0..n/2 of every weight on rank 0, rows n/2..n on rank 1
                  forward   all-gather block 0, compute, free; all-gather block 1, ...

    No wrapper: the model itself becomes the sharded module, and every forward pass, with or without
    gradients (rollouts, log-probs, samples), is a collective. So every process must call the model
    the same number of times (grpo.py refuses --threshold, whose rollouts stop early per process)."""
    if world() == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(model_device(model).type, (world(),))
    for block in model.transformer.blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def is_sharded(model):
    """True for a model that shard() split over the processes (never before shard() imports FSDP)."""
    return FSDP in sys.modules and isinstance(model, sys.modules[FSDP].FSDPModule)


def model_device(model):
    return next(model.parameters()).device


def sync_gradients(wrapped, now: bool):
    """Gradient accumulation under DDP: skip the all-reduce (no_sync) on every micro-batch of a step
    but the last (now=True). A plain model: nothing to do. Under FSDP every micro-batch's backward
    reduce-scatters its gradients at once and adds them to the sharded ones, so no process ever holds
    a whole model's gradients (its no_sync equivalent would keep them whole until the last one)."""
    if now or not isinstance(wrapped, DistributedDataParallel):
        return contextlib.nullcontext()
    return wrapped.no_sync()


# -----------------------------------------------------------------------------
# A sharded model's state, whole, in the files' format (checkpoint.py: save_run, restore, finish)


def full_state(model, optimizer=None):
    """A sharded model's whole state as one unsharded process holds it: (model.state_dict(),
    optimizer.state_dict()), gathered tensor by tensor onto rank 0's CPU; ({}, {}) on the other
    processes, which must call this too (each tensor is a collective). Without an optimizer: None.

    torch.distributed.checkpoint keys the optimizer's state by parameter name; the files keep
    optimizer.state_dict()'s numbering (the parameters' positions in its groups), so the file is
    the one an unsharded run writes, and either kind of run resumes from it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered, on rank 0's CPU only
    weights = get_model_state_dict(model, options=whole)
    if optimizer is None:
        return weights, None
    by_name = get_optimizer_state_dict(model, optimizer, options=whole)
    return weights, by_name and _renumber(by_name, {name: i for i, name in enumerate(_names(model, optimizer))})


def load_full_state(model, optimizer, weights, optimizer_state):
    """The reverse of full_state: every process passes the same whole state (read from one file) and
    keeps its own shard of each tensor."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=whole)
    by_name = _renumber(optimizer_state, dict(enumerate(_names(model, optimizer))))
    set_optimizer_state_dict(model, optimizer, by_name, options=whole)


def _names(model, optimizer):
    """The names of the optimizer's parameters, in the order optimizer.state_dict() numbers them."""
    name = {param: key for key, param in model.named_parameters()}
    return [name[param] for group in optimizer.param_groups for param in group["params"]]


def _renumber(state, key):
    """An optimizer state dict with every parameter's key k replaced by key[k]: numbers <-> names."""
    return {"state": {key[k]: v for k, v in state["state"].items()},
            "param_groups": [{**group, "params": [key[k] for k in group["params"]]} for group in state["param_groups"]]}
