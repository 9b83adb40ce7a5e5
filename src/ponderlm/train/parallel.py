"""Everything that knows about multiple processes: torchrun's process group, DDP / FSDP2, activation
checkpointing, gradient sync during accumulation, metric all-reduce and the `--nproc` re-launch.

The trainer calls these with an unchanged model; one process (no torchrun) takes the same path with
world size 1 and every function degrades to the identity. Wrapping order is fixed (torchtitan):
activation checkpointing, then DDP or FSDP2 (`fully_shard` per decoder layer, then the root).

Methods whose number of backbone passes depends on the data (AdaPonderLM and latent CoT stop when
every token of the micro-batch halted) would make per-layer FSDP2 issue a different number of
all-gathers per rank and deadlock; for them FSDP2 shards the root only (one all-gather per forward,
one reduce-scatter per backward) and DDP looks for unused parameters. Methods with random pass
counts (PonderLM-2/3's Jacobi sweeps) are safe because every rank is seeded identically.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from ponderlm.errors import PonderError

T = TypeVar("T")
FAIL_ENV = "PONDERLM_FAIL_AT"  # test hook: "RANK:STEP" makes that rank os._exit(1) during that step


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process initialised the group (and tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init(device: torch.device, timeout_minutes: float = 30.0) -> tuple[Dist, torch.device]:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); pin one GPU per local rank.

    Returns the rank info and the device this rank trains on. Without torchrun: (Dist(), device).
    """
    if not under_torchrun():
        return Dist(), device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
    return Dist(rank, world, local, owns), device


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def main_first(d: Dist, fn: Callable[[], T]) -> T:
    """Run `fn` on global rank 0, then on each node's local rank 0, then everywhere else.

    For work that fills a cache (data preparation, hub downloads): one process does it, the others find
    it done (node-local caches are filled once per node). Bad input on rank 0 raises on every rank.
    """
    result = None

    def first() -> None:
        nonlocal result
        result = fn()

    on_main(d, first)  # rank 0's turn (its broadcast is also the barrier after it)
    for turn in (d.rank != 0 and d.local_rank == 0, d.local_rank != 0):
        if turn:
            result = fn()
        barrier(d)
    return result


def on_main(d: Dist, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only; every rank gets its result, or raises the same PonderError (bad input)."""
    result: tuple[bool, Any] = (True, None)
    if d.is_main:
        try:
            result = (True, fn())
        except PonderError as exc:
            result = (False, str(exc))
    ok, value = broadcast_object(d, result)
    if not ok:
        raise PonderError(value)
    return value


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if d.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); the identity in one process."""
    if d.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# ---------------------------------------------------------------------------------------------- wrapping
def wrap(model: nn.Module, d: Dist, *, backend: str, activation_checkpointing: bool, amp_dtype: torch.dtype | None,
         find_unused: bool = False, compile: bool = False) -> nn.Module:
    """Apply activation checkpointing and torch.compile, then DDP or FSDP2. Returns the module to call for training.

    `compile` compiles each decoder layer in place (`Module.compile`: parameter names and checkpoints are
    unchanged), before sharding, as torchtitan does; shapes are dynamic because the slot grid of
    pondering methods changes from pass to pass.

    FSDP2 shards in place (`model` itself becomes the FSDP module); DDP returns a wrapper around it.
    `find_unused`: some parameters may get no gradient in a step (frozen backbone stage).
    Mixed precision: on CUDA with bf16, FSDP2 gathers bf16 parameters and reduces fp32 gradients into
    fp32 master weights; DDP keeps fp32 weights under bf16 autocast. On CPU everything stays fp32.
    """
    model.model.gradient_checkpointing = activation_checkpointing  # per layer, in backbone/stack.py
    if compile:
        for layer in model.model.layers:
            layer.compile(dynamic=True)
    if d.world_size == 1:
        return model
    variable = getattr(getattr(model, "method", None), "variable_passes", False)
    if backend == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [model.device.index] if model.device.type == "cuda" else None
        return DDP(model, device_ids=device_ids, gradient_as_bucket_view=True,
                   find_unused_parameters=find_unused or variable)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32 if amp_dtype else None)
    # fully_shard cannot shard 0-d parameters (AdaPonderLM's gate biases): they stay replicated and
    # `gradient_sync` averages their gradients.
    scalars = [p for p in model.parameters() if p.ndim == 0]
    if not variable:
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp, ignored_params=set(scalars))
    fully_shard(model, mp_policy=mp, ignored_params=set(scalars))
    model._replicated_params = scalars
    return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(train_model: nn.Module, sync: bool) -> Iterator[None]:
    """Backward inside this block all-reduces / reduce-scatters gradients only if `sync` (last micro-batch)."""
    if is_fsdp(train_model):
        train_model.set_requires_gradient_sync(sync)
        yield
        replicated = [p.grad for p in train_model._replicated_params if p.grad is not None]
        if sync and replicated:
            flat = torch.cat([g.reshape(1) for g in replicated])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # then divide: gloo has no AVG
            flat /= dist.get_world_size()
            for g, v in zip(replicated, flat):
                g.copy_(v)
    elif sync or not hasattr(train_model, "no_sync"):
        yield
    else:
        with train_model.no_sync():
            yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm (gradients clipped to `max_norm`); FSDP2's gradients are sharded DTensors."""
    if not is_fsdp(model):  # plain or DDP: every rank holds the full, already averaged gradients
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    from torch.distributed.tensor import DTensor

    sharded = [p for p in model.parameters() if p.grad is not None and isinstance(p.grad, DTensor)]
    replicated = [p for p in model.parameters() if p.grad is not None and not isinstance(p.grad, DTensor)]
    total = torch.nn.utils.get_total_norm([p.grad for p in sharded], foreach=True)
    if isinstance(total, DTensor):  # partial norms of the shards -> the global norm
        total = total.full_tensor()
    if replicated:
        rest = torch.nn.utils.get_total_norm([p.grad for p in replicated])
        total = torch.linalg.vector_norm(torch.stack([total, rest]))
    for group in (sharded, replicated):
        if group:
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
    return total


# ---------------------------------------------------------------------------------------------- failures
def maybe_fail(d: Dist, step: int) -> None:
    """Test hook: `PONDERLM_FAIL_AT=RANK:STEP` kills that rank abruptly (no cleanup) during that step."""
    spec = os.environ.get(FAIL_ENV)
    if spec and spec.split(":") == [str(d.rank), str(step)]:
        print(f"rank {d.rank}: {FAIL_ENV}={spec}: simulating a crash in step {step}", file=sys.stderr, flush=True)
        os._exit(1)


def record(fn: Callable[..., T]) -> Callable[..., T]:
    """torchelastic's error recorder: torchrun's failure summary then shows this rank's exception."""
    from torch.distributed.elastic.multiprocessing.errors import record as elastic_record

    return elastic_record(fn)


def relaunch(nproc: int, argv: list[str]) -> int:
    """`ponderlm train --nproc N ...`: run `python -m ponderlm <argv>` on N local processes via torchrun.

    Returns the exit code: 0; 130/143 when every rank stopped on a signal (checkpoint written); 2 for bad
    input (rank 0 printed it); else 1 after a one-line summary of which rank failed and how.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "ponderlm", *argv])
    try:
        run(args)
    except SignalException as exc:  # torchrun passed the signal on; the ranks had up to 30 s to checkpoint
        print(f"stopped by {exc.sigval.name}", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        if codes == {2}:  # bad input, printed by rank 0
            return 2
        stopped = codes & {130, 143}  # stopped on a signal after a checkpoint (torchrun may kill the slower ranks)
        if stopped and codes <= {130, 143, -signal.SIGINT, -signal.SIGTERM}:
            return max(stopped)
        # Ranks that exited by themselves first; the ones torchrun then stopped (SIGTERM) last.
        failures = sorted(exc.failures.items(), key=lambda kv: (kv[1].exitcode < 0, kv[1].timestamp, kv[0]))
        what = [f"rank {rank} exited with code {f.exitcode}" if f.exitcode > 0 else
                f"rank {rank} was stopped by {f.signal_name()}" for rank, f in failures]
        print(f"error: distributed training failed: {'; '.join(what)} (torchrun stops the other ranks when one "
              "fails). Checkpoints with a manifest are complete", file=sys.stderr)
        return 1
    return 0
