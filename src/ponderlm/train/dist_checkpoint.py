"""Sharded checkpoints (torch.distributed.checkpoint) and the consolidated `final/` export.

With world size > 1 (or `dist.checkpoint: dcp`) a checkpoint is written by every rank together:

    checkpoints/step_000123/
      config.json                      the model's PonderConfig (for tools; weights are in dcp/)
      dcp/.metadata, dcp/__R_0.distcp  model + optimizer, each rank's shard; loads at any world size
      rng/rank_00000.{safetensors,json}  every rank's torch / python / numpy RNG states
      trainer_state.json               step, tokens seen, loader position, config hash, format, world size
      manifest.json                    size + sha256 of every file (hashing shared by the ranks), written last

It keeps the single-process contract of `checkpoint.py`: files go to a `.tmp-*` directory, every rank
fsyncs what it wrote, a barrier, then rank 0 writes the manifest and renames the directory into place.
A rank dying mid-save leaves only a `.tmp-*` directory; the previous checkpoint stays complete.

Loading reshards: the state is read into this run's (possibly differently sharded) model and optimizer
through `get_state_dict` / `set_state_dict`. Single-file checkpoints (world size 1) still load with
`checkpoint.load_checkpoint`, also on several DDP ranks.

Loading never executes code from the checkpoint. DCP's stock reader unpickles `.metadata` with plain
`pickle` and its default planner reads non-tensor items with `torch.load(weights_only=False)`; a run
directory someone else wrote could run anything through either. `SafeFileSystemReader` unpickles the
metadata with an allowlist of DCP's own metadata types, and `SafeLoadPlanner` reads non-tensor items with
`weights_only=True` (tensors already are). Anything else in those files is refused with a PonderError.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from ponderlm.errors import PonderError
from ponderlm.train import checkpoint as ckpt
from ponderlm.train.parallel import Dist, barrier, broadcast_object, is_fsdp

DCP_DIR = "dcp"


# ---------------------------------------------------------------------------------------------- safe reading
# Every global a DCP `.metadata` pickle written by torch.distributed.checkpoint refers to. Constructing any of
# them with attacker-chosen arguments only builds inert data (dataclasses, a Size, a path, a dtype).
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                     torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} (not a DCP metadata type)")


class SafeFileSystemReader(dcp.FileSystemReader):
    """`FileSystemReader` whose metadata unpickling admits only DCP's own metadata types."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except Exception as e:  # noqa: BLE001 - any failure to parse is the same user-facing problem
            raise PonderError(f"unsafe or corrupt DCP metadata {path}: {e}") from None
        if not isinstance(metadata, Metadata):
            raise PonderError(f"unsafe or corrupt DCP metadata {path}: not a checkpoint Metadata object")
        for info in (metadata.storage_data or {}).values():
            rel = str(getattr(info, "relative_path", ""))
            if not rel or "/" in rel or "\\" in rel or rel.startswith("."):
                raise PonderError(f"DCP metadata {path} points outside its directory ({rel!r})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` reading non-tensor items (optimizer hyper-parameters) with `weights_only=True`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception:  # noqa: BLE001 - a refused global and a corrupt blob are the same problem here
            raise PonderError(f"refusing checkpoint item {read_item.dest_index.fqn}: it is not plain data "
                              "(a weights_only load failed), so loading it could run code") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


# ---------------------------------------------------------------------------------------------- save
def save_checkpoint(root: Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int, d: Dist) -> Path:
    """Collective: every rank must call it. Returns the final directory."""
    final = root / ckpt.step_dir_name(step)
    tmp = Path(broadcast_object(d, str(root / f".tmp-{final.name}-{os.getpid()}")))
    with ckpt.writing(f"checkpoint {final}", tmp):  # a full disk: tmp removed, the OS error in one line
        if d.is_main:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
            model.config.to_json_file(tmp / "config.json")
            (tmp / ckpt.STATE).write_text(json.dumps({**state, "step": step, "format": "dcp",
                                                       "world_size": d.world_size}, indent=1))
        barrier(d)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR),  # fsyncs its files
                 no_dist=not dist.is_initialized())
        tensors, plain = ckpt.capture_rng()
        name = tmp / "rng" / f"rank_{d.rank:05d}"
        save_file(tensors, f"{name}.safetensors")
        Path(f"{name}.json").write_text(json.dumps(plain))
        barrier(d)  # every rank's files are on disk
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        mine = {str(p.relative_to(tmp)): ckpt.describe(p) for i, p in enumerate(files) if i % d.world_size == d.rank}
        manifest = _gather_dicts(d, mine)
        if d.is_main:
            ckpt.commit(tmp, final, step, manifest, keep_last)
    barrier(d)  # nobody moves on (or exits) before the checkpoint is complete
    return final


def _gather_dicts(d: Dist, mine: dict[str, Any]) -> dict[str, Any]:
    if d.world_size == 1:
        return mine
    parts: list[Any] = [None] * d.world_size
    dist.all_gather_object(parts, mine)
    return {k: v for part in parts for k, v in part.items()}


# ---------------------------------------------------------------------------------------------- resume
def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Dist) -> None:
    """Load a verified checkpoint of either format into the (wrapped) model and its optimizer."""
    if not (path / DCP_DIR).is_dir():  # a single-file checkpoint
        if is_fsdp(model):
            raise PonderError(f"{path} is a single-process checkpoint; resume it with dist.backend=ddp "
                              "(or one process) and save once, then switch to fsdp2")
        ckpt.load_checkpoint(path, model=model, optimizer=optimizer)  # every DDP rank reads the full files
        return
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the shapes this run expects (a template)
    reader = SafeFileSystemReader(str(path / DCP_DIR))
    saved = set(reader.read_metadata().state_dict_metadata)
    missing = [k for k in model_sd if f"model.{k}" not in saved]
    if missing:
        raise PonderError(f"checkpoint {path} has no weights for {missing[:3]}")
    state = {"model": model_sd, "optim": optim_sd}
    # Partial: parameters frozen so far (AdaPonderLM's gates-only stage) have no optimizer state yet.
    try:
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(allow_partial_load=True),
                 no_dist=not dist.is_initialized())
    except CheckpointException as e:  # DCP wraps every rank's failure; surface ours as one line
        errors = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]  # (exception, traceback)
        inner = [err for err in errors if isinstance(err, PonderError)]
        if inner:
            raise inner[0] from None
        raise PonderError(f"cannot read sharded checkpoint {path}: {str(e).splitlines()[0]}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    # The template had every state initialised; drop those the checkpoint lacked so AdamW starts them
    # fresh exactly when the uninterrupted run would have.
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if f"optim.state.{names[id(p)]}.step" not in saved:
                optimizer.state.pop(p, None)
    rng = path / "rng" / f"rank_{d.rank:05d}"
    if not Path(f"{rng}.json").is_file():  # a different world size: ranks share rank 0's states
        rng = path / "rng" / "rank_00000"
    ckpt.restore_rng(load_file(f"{rng}.safetensors"), json.loads(Path(f"{rng}.json").read_text()))


# ---------------------------------------------------------------------------------------------- final/
def export_pretrained(model: torch.nn.Module, directory: Path, d: Dist) -> torch.nn.Module | None:
    """Collective: write a consolidated `save_pretrained` directory from rank 0.

    Returns a plain, unsharded model on rank 0 (the same object unless FSDP2 sharded it) and None elsewhere.
    """
    if not is_fsdp(model):
        if d.is_main:
            ckpt.save_pretrained_quietly(model, directory)
            return model
        return None
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return None
    from ponderlm.modeling import PonderForCausalLM

    with torch.device("meta"):
        plain = PonderForCausalLM(model.config)
    plain.load_state_dict(full, assign=True)
    if model.config.tie_word_embeddings:
        plain.tie_weights()
    ckpt.save_pretrained_quietly(plain, directory)
    return plain
