"""The training loop, readable top to bottom (nanoGPT style).

`train(cfg)` builds everything, optionally resumes from the newest complete checkpoint, then per
step: fetch, micro-batch forward/backward, clip, optimizer step at the scheduled lr, log, eval,
save. It ends with `<out>/final/` (weights + tokenizer), a summary and a greedy sample.

The same code runs in one process and under torchrun (`ponderlm train --nproc N` or `torchrun ... -m
ponderlm train`): `train/parallel.py` owns the process group and wraps the unchanged model (DDP or
FSDP2), `train/dist_checkpoint.py` writes sharded checkpoints, each rank reads its slice of every
global batch, and only rank 0 (`d.is_main`) logs and writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ponderlm.data.loader import (
    TokenLoader,
    check_data_dir,
    describe_windows,
    iter_eval_batches,
    read_meta,
    unigram_perplexity,
)
from ponderlm.errors import PonderError
from ponderlm.methods.options import DecodeOptions
from ponderlm.paths import cache_dir
from ponderlm.train import checkpoint as ckpt
from ponderlm.train import dist_checkpoint as dckpt
from ponderlm.train import parallel, rundir
from ponderlm.train.config import (
    DataConfig,
    RunConfig,
    build_model_config,
    describe_differences,
    grad_accum_for,
    provenance,
    save_yaml,
)
from ponderlm.train.logging import MetricsLogger
from ponderlm.train.schedule import lr_at, warmup_steps


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    tokens_seen: int
    signal: int | None = None  # set when SIGINT/SIGTERM stopped the run after a checkpoint
    stopped_early: bool = False  # `stop_after` reached (checkpoint written, no final/)
    val_loss: float | None = None
    val_ppl: float | None = None
    unigram_ppl: float | None = None
    executed_steps: float | None = None
    sample: str | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else 0  # 130 for SIGINT, 143 for SIGTERM, like a shell


def train(cfg: RunConfig, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) training as described by `cfg`; return where things went and the final metrics.

    `stop_after`: leave this invocation after that optimizer step (checkpoint written, no `final/`),
    as if interrupted; useful for time-boxed jobs and for testing resume.
    """
    device, amp_dtype = resolve_device(cfg.train.device, cfg.train.dtype)
    d, device = parallel.init(device, cfg.dist.timeout_minutes)  # torchrun's process group, or one process
    lock = rundir.RunLock()  # held by the main process from claiming the run dir until the end (or a crash)
    try:
        return _train(cfg, d, device, amp_dtype, resume, stop_after, lock)
    finally:
        lock.release()
        parallel.teardown(d)


def _train(cfg: RunConfig, d: parallel.Dist, device: torch.device, amp_dtype: torch.dtype | None, resume: bool,
           stop_after: int | None, lock: rundir.RunLock) -> TrainResult:
    """A run as its phases, in order (nothing is written before the run dir is claimed)."""
    out = _check_run(cfg, d, resume)
    data_dir, data_vocab, model_config = _prepare_data(cfg, d)
    resuming = _claim_run_dir(cfg, d, out, resume, lock)
    run = _Run(cfg, d, device, amp_dtype, out, data_dir, data_vocab, model_config, resuming)
    return run.finish(run.loop(stop_after).signum, stop_after)


def _check_run(cfg: RunConfig, d: parallel.Dist, resume: bool) -> Path:
    """Name the run dir; fail on a bad setting or an unusable run dir before any data work or disk write."""
    cfg.train.out = parallel.broadcast_object(d, cfg.train.out or f"runs/{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}")
    out = Path(cfg.train.out)
    build_model_config(cfg)  # validate model keys and seq_len before any data work or disk writes
    if cfg.model.get("init_from"):  # settings contradicting the checkpoint's architecture, before any disk write
        _check_init_from(cfg)
    parallel.on_main(d, lambda: rundir.check_out_dir(out, resume))  # read-only; see rundir.py for the protocol
    grad_accum_for(cfg, d.world_size)
    return out


def _prepare_data(cfg: RunConfig, d: parallel.Dist) -> tuple[Path, int, Any]:
    """The data (prepared into a cache on first use, by one process) and the model config with its vocabulary."""
    data_dir = parallel.main_first(d, lambda: resolve_data_dir(cfg.data))
    data_vocab = int(read_meta(data_dir)["vocab_size"])
    parallel.on_main(d, lambda: check_data_dir(data_dir))  # token ids and tokenizer, before anything is written
    if not cfg.model.get("init_from") and "vocab_size" not in cfg.model:  # a backbone brings its own vocabulary
        cfg.model["vocab_size"] = data_vocab
        cfg.sources["model.vocab_size"] = "the data's tokenizer"
    model_config = build_model_config(cfg)
    _check_vocab(model_config.vocab_size, data_vocab)
    return data_dir, data_vocab, model_config


def _claim_run_dir(cfg: RunConfig, d: parallel.Dist, out: Path, resume: bool, lock: rundir.RunLock) -> bool:
    """Lock the run dir (a new one appears with its config.yaml); whether to resume. A run that never completed
    a checkpoint starts again from step 0, rewriting config.yaml first: a kill at any point leaves a restartable dir."""
    write_config = lambda where: save_yaml(cfg, where / "config.yaml")  # noqa: E731
    parallel.on_main(d, lambda: lock.acquire(out, write_config))
    return parallel.on_main(d, lambda: rundir.claim(out, resume, write_config))


class _Run:
    """The phases from the built model on: they share the model, optimizer, loader and `step` / `tokens_seen`."""

    def __init__(self, cfg: RunConfig, d: parallel.Dist, device: torch.device, amp_dtype: torch.dtype | None,
                 out: Path, data_dir: Path, data_vocab: int, model_config: Any, resuming: bool) -> None:
        """Model (wrapped for DDP/FSDP2), optimizer and loader, fresh or resumed; open the log, say what runs."""
        t, identity = cfg.train, cfg.identity_hash()
        self.cfg, self.d, self.device, self.out, self.data_dir, self.last_eval = cfg, d, device, out, data_dir, {}
        # Seed every global RNG (init, dropout, data order): the same draws on every rank and fresh run; a resume
        # then restores the states. PonderLM-2's Jacobi sweep counts come from their own generator, keyed by the step.
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        build = lambda: build_model(cfg, model_config, data_vocab)  # noqa: E731
        self.model = model = parallel.main_first(d, build) if cfg.model.get("init_from") else build()  # one download
        model.to(device)

        # Find and verify the checkpoint against this model and its optimizer before writing anything else (a bad
        # one is set aside and an older one used; none valid leaves the run dir untouched). Rank 0 verifies; every
        # rank gets the same answer. Verification only reads, and uses scratch RNGs: the seeded draws are unchanged.
        def find() -> tuple[Path, dict[str, Any]]:
            template = ckpt.StateTemplate.of(model, build_optimizer(model, cfg, torch.device("cpu")))
            return ckpt.newest_valid_checkpoint(out / "checkpoints", identity, template)

        resume_from, state = parallel.on_main(d, find) if resuming else (None, {})
        self.step, self.tokens_seen = state.get("step", 0), state.get("tokens_seen", 0)
        if d.is_main and resuming:
            try:
                save_yaml(cfg, out / "config.yaml")
            except OSError as exc:
                raise PonderError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None

        freezing = self.step < t.freeze_backbone_steps
        self.train_model = parallel.wrap(model, d, backend=cfg.dist.backend, amp_dtype=amp_dtype,
                                         activation_checkpointing=cfg.dist.activation_checkpointing,
                                         find_unused=freezing, compile=t.compile)
        self.optimizer = build_optimizer(model, cfg, device)  # all parameters, frozen or not: no rebuild at the switch
        self.loader = TokenLoader(data_dir, "train", cfg.data.seq_len, t.batch_size, seed=t.seed, rank=d.rank,
                                  world_size=d.world_size)
        if resume_from is not None:
            dckpt.load_checkpoint(resume_from, model=model, optimizer=self.optimizer, d=d)
            self.loader.load_state_dict(state["loader"])
            if d.is_main:
                print(f"resumed from {resume_from} (step {self.step})", file=sys.stderr)
        self.frozen = model.method.freeze_backbone(model) if freezing else None  # e.g. AdaPonderLM: gates first
        n_params = sum(p.numel() for p in model.parameters())
        self.logger = MetricsLogger(out, cfg.to_dict(), start_step=self.step, tensorboard=cfg.log.tensorboard,
                                    wandb=cfg.log.wandb, wandb_project=cfg.log.wandb_project,
                                    run_name=out.name) if d.is_main else None
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        self.warmup = warmup_steps(t.steps, cfg.optim.warmup_frac, cfg.optim.warmup_steps)
        self.accum = grad_accum_for(cfg, d.world_size)
        self.tokens_per_step = t.batch_size * cfg.data.seq_len * self.accum * d.world_size
        self.base_state = {"identity_hash": identity, "model_config": cfg.model_kwargs(), "config_name": cfg.name}
        if d.is_main:
            print(describe_differences(cfg), file=sys.stderr)  # no hidden recipe: what this run changed, and who did
            where = f"{d.world_size} x {device.type} ({cfg.dist.backend})" if d.world_size > 1 else str(device)
            c = model.config
            print(f"{cfg.name}: {c.method} (K={c.max_steps}) {c.backbone}, {n_params / 1e6:.2f}M params, {t.steps} "
                  f"steps x {self.tokens_per_step:,} tokens on {where}"
                  f"{' ' + str(amp_dtype).replace('torch.', '') + ' autocast' if amp_dtype else ''}", file=sys.stderr)

    def loop(self, stop_after: int | None) -> _StopOnSignal:
        """Steps until train.steps, a signal or `stop_after`, with logs, evaluations and checkpoints on schedule."""
        d, t, log_every = self.d, self.cfg.train, self.cfg.log.log_every
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=t.steps, initial=self.step, disable=not (d.is_main and interactive), unit="step",
                        dynamic_ncols=True)
        self.train_model.train()
        try:
            with _StopOnSignal(grace=5.0 if d.world_size > 1 else 0.0, verbose=d.is_main) as stop:
                while self.step < t.steps:
                    row, step = self.train_step(stop), self.step
                    if d.is_main:
                        self.logger.log(row)
                        self.bar.update(1)
                        self.bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}")
                        if not interactive and (step % log_every == 0 or step == t.steps or step == 1):
                            print(_train_line(row, t.steps), file=sys.stderr)
                    if step % t.eval_every == 0 or step == t.steps:
                        self.eval_and_log()
                    leaving = stop.signum is not None or (stop_after is not None and step >= stop_after)
                    if step % t.save_every == 0 or step == t.steps or leaving:
                        self.save()
                    if leaving:
                        break
        except Exception as exc:
            if d.world_size > 1:  # say which rank and step; torchrun's summary names the first rank that failed
                print(f"rank {d.rank}/{d.world_size}: training failed in step {self.step + 1}: {type(exc).__name__}: "
                      f"{exc}", file=sys.stderr, flush=True)
            raise
        finally:  # close the metrics file and TensorBoard writer even when a step raises
            self.bar.close()
            if self.logger is not None:
                self.logger.close()
        return stop

    def train_step(self, stop: _StopOnSignal) -> dict[str, Any]:
        """One optimizer step over `accum` micro-batches per rank; its metrics row, reduced over the ranks."""
        d, device, model, t, o, accum = self.d, self.device, self.model, self.cfg.train, self.cfg.optim, self.accum
        t0 = time.perf_counter()
        if self.frozen is not None and self.step >= t.freeze_backbone_steps:  # from now on the whole model trains
            self.frozen.restore()
            self.frozen = None
        lr = lr_at(self.step, lr=o.lr, total_steps=t.steps, warmup=self.warmup, min_lr_ratio=o.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model.set_training_progress(self.step)
        parallel.maybe_fail(d, self.step + 1)
        # (inputs, labels), (B, T) each: labels are the inputs, -100 outside a synthetic set's loss mask
        batches = [tuple(t.to(device, non_blocking=True) for t in self.loader.next_labeled_batch())
                   for _ in range(accum)]
        # Normalise by the global number of predicted tokens (torchtitan): the sum of token losses over all
        # micro-batches and ranks / that count, so accumulation and world size leave it unchanged.
        counts = [(y[:, 1:] != -100).sum() for _, y in batches]  # -100: ignored
        total = parallel.all_reduce_sum(d, torch.stack(counts).sum().float())
        loss_sum = torch.zeros((), device=device)
        exec_sum = torch.zeros((), device=device)
        for i, ((x, y), n) in enumerate(zip(batches, counts)):
            with parallel.gradient_sync(self.train_model, sync=i == accum - 1):
                with self.autocast():
                    output = self.train_model(input_ids=x, labels=y)
                micro = output.lm_loss * (n / total)
                if output.aux_loss is not None:  # method terms are means: average them over micro-batches
                    micro = micro + output.aux_loss / (accum * d.world_size)
                (micro * d.world_size).backward()  # DDP / FSDP2 average gradients over ranks
            loss_sum += micro.detach().float()
            exec_sum += _mean_steps(output)
        grad_norm = parallel.clip_grad_norm(self.train_model, o.grad_clip if o.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step

        # One all-reduce per step: global loss, executed steps and whether any rank got a signal.
        flags = [float(stop.signum == s) for s in (signal.SIGINT, signal.SIGTERM)]
        stats = torch.cat([torch.stack([loss_sum, exec_sum]), torch.tensor(flags, device=device)])
        loss, exec_steps, got_int, got_term = parallel.all_reduce_sum(d, stats).tolist()
        stop.signum = int(signal.SIGINT) if got_int else int(signal.SIGTERM) if got_term else None
        if not math.isfinite(loss):
            raise PonderError(f"loss became {loss} at step {self.step}; lower optim.lr or raise optim.warmup_frac")
        return {"kind": "train", "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm.item(),
                "tokens_seen": self.tokens_seen, "tokens_per_s": self.tokens_per_step / (time.perf_counter() - t0),
                "executed_steps": exec_steps / (accum * d.world_size)}

    def eval_and_log(self) -> None:
        """Validation on every rank (the same batches), logged by rank 0; the last one goes into the summary."""
        self.last_eval = evaluate(self.model, self.data_dir, self.cfg, self.device, self.autocast)
        if self.d.is_main:
            self.logger.log({"kind": "eval", "step": self.step, **self.last_eval})
            self.bar.write(_eval_line(self.step, self.last_eval), file=sys.stderr)
        self.train_model.train()

    def save(self) -> None:
        """A checkpoint of this step: model, optimizer, loader position and what a resume verifies."""
        st = {**self.base_state, "tokens_seen": self.tokens_seen, "loader": self.loader.state_dict()}
        kwargs = dict(model=self.model, optimizer=self.optimizer, state=st, keep_last=self.cfg.train.keep_last)
        if self.d.world_size > 1 or self.cfg.dist.checkpoint == "dcp":  # collective: every rank writes its shard
            dckpt.save_checkpoint(self.out / "checkpoints", self.step, d=self.d, **kwargs)
        elif self.d.is_main:
            ckpt.save_checkpoint(self.out / "checkpoints", self.step, **kwargs)

    def finish(self, signum: int | None, stop_after: int | None) -> TrainResult:
        """Stopped early: how to continue. Else `final/` (consolidated from the shards, assembled in a staging dir
        and renamed into place complete: rundir.publish_dir), the summary and a sample (`_finish`)."""
        if signum is not None or self.step < self.cfg.train.steps:
            why = f"signal {signal.Signals(signum).name}" if signum else f"stop_after={stop_after}"
            if self.d.is_main:
                print(f"stopped after step {self.step} ({why}); checkpoint in {self.out / 'checkpoints'}; continue "
                      f"with `ponderlm train --out {self.out} --resume`", file=sys.stderr)
            return TrainResult(self.out, self.step, self.tokens_seen, signal=signum, stopped_early=signum is None)
        result = TrainResult(self.out, self.step, self.tokens_seen)
        if not self.last_eval:  # resumed at or past the last step: nothing evaluated in this process yet
            self.last_eval = evaluate(self.model, self.data_dir, self.cfg, self.device, self.autocast)
        staging = parallel.broadcast_object(self.d, rundir.staging_dir(self.out))
        with ckpt.writing(f"{self.out / 'final'}", staging):  # a full disk: the half-written export is removed
            plain = dckpt.export_pretrained(self.model, staging, self.d)
            if self.d.is_main:
                _finish(result, plain, self.cfg, self.data_dir, self.last_eval, staging)
        return result


# ---------------------------------------------------------------------------------------------- building blocks
def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype | None]:
    """Pick the device and the autocast dtype (None = plain fp32). Never autocast on CPU: bf16 there is far slower."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PonderError(f"train.device={device} but CUDA is not available; use train.device=auto or cpu")
    if dtype == "bf16" and dev.type != "cuda":
        raise PonderError(f"train.dtype=bf16 needs CUDA (bf16 autocast on {dev.type} is much slower than fp32); "
                          "use train.dtype=auto or fp32")
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise PonderError("train.dtype=bf16 but this GPU does not support bf16; use train.dtype=auto or fp32")
    use_bf16 = dtype == "bf16" or (dtype == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
    return dev, (torch.bfloat16 if use_bf16 else None)


def build_model(cfg: RunConfig, model_config: Any, data_vocab: int) -> torch.nn.Module:
    """A fresh model, or one continued from a Hugging Face backbone (`model.init_from`)."""
    from ponderlm.modeling import PonderForCausalLM

    init_from = cfg.model.get("init_from")
    if not init_from:
        return PonderForCausalLM(model_config)
    try:
        model = PonderForCausalLM.from_backbone(init_from, **cfg.model_kwargs())
    except ValueError as exc:  # e.g. settings that contradict the checkpoint's architecture: one line
        raise PonderError(f"model.init_from: {exc}") from None
    _check_vocab(model.config.vocab_size, data_vocab)  # data.seq_len was checked by _check_init_from
    return model


def _check_init_from(cfg: RunConfig) -> None:
    from ponderlm.backbone.hf_import import check_backbone_overrides

    kwargs = cfg.model_kwargs()
    try:
        base = check_backbone_overrides(cfg.model["init_from"], kwargs.pop("method", "vanilla"), **kwargs)
    except (OSError, ValueError) as exc:  # unreadable / unknown checkpoint, or a contradicting setting
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PonderError(f"model.init_from: {first}") from None
    positions = kwargs.get("max_position_embeddings", base.max_position_embeddings)
    if cfg.data.seq_len > positions:
        raise PonderError(f"data.seq_len ({cfg.data.seq_len}) exceeds {cfg.model['init_from']}'s "
                          f"max_position_embeddings ({positions}); lower data.seq_len")


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; no weight decay on 1-D parameters (norms, biases) or embedding tables (as in GPT-NeoX/OLMo)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields shared (tied) tensors once
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in embeddings else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=device.type == "cuda")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_dir: Path, cfg: RunConfig, device: torch.device,
             autocast: Any) -> dict[str, float]:
    """Validation CE (without method aux losses), perplexity and average executed steps."""
    model.eval()
    nll, count, rows, steps = 0.0, 0, 0, 0.0
    K = model.config.max_steps
    depth_counts = torch.zeros(K + 1, dtype=torch.long)
    diagnostics: dict[str, float] = {}
    for i, (x, y) in enumerate(iter_eval_batches(data_dir, "val", cfg.data.seq_len, cfg.train.batch_size,
                                                 max_batches=cfg.train.eval_batches, labels=True)):
        x, y = x.to(device), y.to(device)  # y: the inputs, -100 outside a synthetic set's loss mask
        with autocast():
            if i == 0:
                out, diagnostics = _with_input_rms(model, x)
            else:
                out = model(input_ids=x)
        if out.executed_steps is not None and K > 0:
            depth_counts += torch.bincount(out.executed_steps.detach().round().long().clamp(0, K).flatten().cpu(),
                                           minlength=K + 1)
        logits = out.logits[:, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1),
                                                 reduction="sum", ignore_index=-100).item()
        count += int((y[:, 1:] != -100).sum())
        steps += float(_mean_steps(out)) * x.size(0)
        rows += x.size(0)
    if count == 0:
        raise PonderError(f"no validation data in {data_dir} (val split empty or shorter than data.seq_len)")
    loss = nll / count
    share = (depth_counts.float() / depth_counts.sum().clamp(min=1)).tolist() if K > 0 else []
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_executed_steps": steps / rows,
            "val_tokens": count, **{f"val_depth_share_{k}": v for k, v in enumerate(share)}, **diagnostics}


def _with_input_rms(model: Any, x: torch.Tensor) -> tuple[Any, dict[str, float]]:
    """One forward that also measures the RMS of the token slots' inputs (the scaled embeddings) and of the
    latent inputs fed back into the stack (recipe diagnostics: the two should be of a similar size).

    The latent inputs are read off the last pass of the stack: for the interleaved layout, every slot after
    the token slot; for the recurrent methods (one slot per token, several passes), the last pass's input.
    Methods whose last pass is packed (pruned slots removed) or single-pass report only the token RMS.
    """
    calls: list[torch.Tensor] = []
    handle = model.model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].detach()))
    try:
        out = model(input_ids=x)
    finally:
        handle.remove()
    rms = lambda t: float(t.float().pow(2).mean().sqrt())  # noqa: E731
    result = {"input_rms_token": rms(model.embed(x))}
    n, (b, t) = model.config.num_slots_per_token, x.shape
    if calls and n > 1 and calls[-1].shape[:2] == (b, t * n):
        result["input_rms_latent"] = rms(calls[-1].view(b, t, n, -1)[:, :, 1:])
    elif len(calls) > 1 and n == 1 and calls[-1].shape[:2] == (b, t):
        result["input_rms_latent"] = rms(calls[-1])
    return out, result


def _mean_steps(out: Any) -> torch.Tensor | float:
    """Mean executed additional steps per token, left on the device (no sync per micro-batch)."""
    steps = getattr(out, "executed_steps", None)
    return 0.0 if steps is None else steps.detach().float().mean()


def resolve_data_dir(data: DataConfig) -> Path:
    """The prepared-shards directory for `data`, prepared on first use (`prepare_data` publishes atomically)."""
    if data.data_dir:
        path = Path(data.data_dir)
    else:
        key = json.dumps({"inputs": data.inputs, "tokenizer": data.tokenizer, "val_fraction": data.val_fraction},
                         sort_keys=True)
        path = cache_dir() / "data" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (path / "meta.json").is_file():
        return path
    from ponderlm.data.prepare import prepare_data

    print(f"preparing {', '.join(data.inputs)} with tokenizer {data.tokenizer} into {path} (first use only)",
          file=sys.stderr)
    prepare_data(data.inputs, data.tokenizer, path, val_fraction=data.val_fraction)
    return path


def _train_line(row: dict[str, Any], total: int) -> str:
    return (f"step {row['step']}/{total} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | grad {row['grad_norm']:.2f} "
            f"| {row['tokens_per_s']:,.0f} tok/s | steps {row['executed_steps']:.2f}")


def _eval_line(step: int, ev: dict[str, float]) -> str:
    return (f"eval @ {step}: val loss {ev['val_loss']:.4f} | ppl {ev['val_ppl']:.2f} "
            f"| steps {ev['val_executed_steps']:.2f}")


def _check_vocab(model_vocab: int, data_vocab: int) -> None:
    if model_vocab < data_vocab:
        raise PonderError(f"model.vocab_size ({model_vocab}) is smaller than the data's vocabulary ({data_vocab}); "
                          "leave model.vocab_size unset to take the data's")


class _StopOnSignal:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. A second one aborts at once; under torchrun a
    repeat within `grace` seconds is the same request (the launcher forwards what the terminal or scheduler
    already sent). `signum` is the agreed request: any rank's signal, after the per-step all-reduce."""

    def __init__(self, grace: float = 0.0, verbose: bool = True) -> None:
        self.signum: int | None = None
        self.grace, self.verbose = grace, verbose
        self._first: float | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self._first is not None:
            if now - self._first > self.grace:
                raise KeyboardInterrupt
            return
        self._first, self.signum = now, self.signum or signum
        if self.verbose:
            print(f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
                  "(send again to abort without saving)", file=sys.stderr)

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers only install there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def eval_conditions(cfg: RunConfig, config: Any, data_dir: Path, tokens: int) -> dict[str, Any]:
    """The conditions of the trainer's validation perplexity, recorded beside it: another evaluation of the same
    model (`ponderlm eval ppl` defaults to other windows) gives another number."""
    t, knobs = cfg.train, DecodeOptions.resolve(config)  # the method's inference knobs at their saved values
    described = knobs.describe()  # empty when the method has no knob set (as eval ppl's conditions)
    return {"split": "val", "data_dir": str(data_dir), "seq_len": cfg.data.seq_len, "batch_size": t.batch_size,
            "batches": t.eval_batches, "tokens": tokens, "knobs": knobs.as_dict(),
            "description": f"the val split's {describe_windows(t.eval_batches, t.batch_size, cfg.data.seq_len, tokens)}"
                           f", the trainer's final evaluation" + (f", {described}" if described else "")}


def _data_description(data_dir: Path) -> str:
    """The prepared data's sources and token counts, for the model card."""
    try:
        meta = json.loads((data_dir / "meta.json").read_text())
        inputs = ", ".join(str(i.get("input")) for i in meta.get("inputs", [])) or str(data_dir)
        return f"{inputs} ({meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val tokens)"
    except (OSError, ValueError, KeyError, TypeError):  # an older or hand-made data directory
        return str(data_dir)


def _finish(result: TrainResult, model: Any, cfg: RunConfig, data_dir: Path, last_eval: dict[str, float],
            staging: Path) -> None:
    """Complete `final/` (the weights are already in `staging`) with the tokenizer, publish it, print the summary
    and a greedy sample."""
    from ponderlm.data.tokenizer import load_tokenizer
    from ponderlm.hub import complete_checkpoint

    out = result.out_dir
    final = out / "final"
    # The tokenizer that made the data (prepare_data keeps a copy), so final/ matches the tokens it saw.
    tokenizer = load_tokenizer(data_dir / "tokenizer" if (data_dir / "tokenizer").is_dir() else cfg.data.tokenizer)
    result.val_loss, result.val_ppl = last_eval["val_loss"], last_eval["val_ppl"]
    result.executed_steps = last_eval["val_executed_steps"]
    result.unigram_ppl = unigram_perplexity(data_dir)
    # Special token ids, a left-padding tokenizer and a model card: final/ stands alone as an HF checkpoint.
    evaluation = eval_conditions(cfg, model.config, data_dir, int(last_eval["val_tokens"]))
    settings = provenance(cfg)
    complete_checkpoint(staging, model, tokenizer, {
        "name": out.resolve().name, "data": _data_description(data_dir), "init_from": cfg.model.get("init_from"),
        "steps": result.step, "tokens_seen": result.tokens_seen, "val_ppl": result.val_ppl,
        "val_conditions": evaluation["description"], "recipe": settings["recipe"],
        "avg_executed_steps": result.executed_steps, "parameters": sum(p.numel() for p in model.parameters())})
    rundir.publish_dir(staging, final)
    K = model.config.max_steps
    depth_share = [last_eval[f"val_depth_share_{k}"] for k in range(K + 1) if f"val_depth_share_{k}" in last_eval]
    sample_view = None
    if cfg.train.sample_tokens > 0 and cfg.train.sample_prompt:
        sample_view = _sample(model, tokenizer, cfg)
        result.sample = tokenizer.decode([i for i, _ in sample_view], skip_special_tokens=True)
    summary = {"steps": result.step, "tokens_seen": result.tokens_seen, "val_loss": result.val_loss,
               "val_ppl": result.val_ppl, "unigram_ppl": result.unigram_ppl,
               "avg_executed_steps": result.executed_steps, "max_steps_K": K, "depth_share": depth_share,
               "evaluation": evaluation, "settings": settings, "parameters": sum(p.numel() for p in model.parameters()),
               "final": str(final), "sample": result.sample,
               "sample_steps": None if sample_view is None else [s for _, s in sample_view]}
    rundir.write_text_atomic(out / "summary.json", json.dumps(summary, indent=1))
    print(f"\ndone: {result.step} steps, {result.tokens_seen:,} tokens\n"
          f"val perplexity {result.val_ppl:.2f} (loss {result.val_loss:.4f}) vs unigram baseline "
          f"{result.unigram_ppl:.2f}\n"
          f"  on {evaluation['description']}\n"
          f"avg executed steps {result.executed_steps:.2f} of K={model.config.max_steps}\n"
          f"run dir  {out}  (config.yaml, metrics.jsonl, checkpoints/, tb/)\n"
          f"model    {final}  (PonderForCausalLM.from_pretrained)")
    if depth_share and model.config.method_class.adaptive:
        shares = " | ".join(f"{k} step{'s' if k != 1 else ''} {100 * v:.0f}%" for k, v in enumerate(depth_share))
        print(f"learned depth per token (validation): {shares}")
    if sample_view is not None:
        _print_sample(tokenizer, sample_view, len(tokenizer.encode(cfg.train.sample_prompt)), K, cfg)


def _sample(model: Any, tokenizer: Any, cfg: RunConfig) -> list[tuple[int, float | None]]:
    """A sampled continuation of train.sample_prompt (seeded by train.seed) as (token id, executed steps) pairs.

    Sampling (temperature / top-k, as users of `ponderlm generate` see it) rather than greedy: a barely trained
    model's greedy continuation is a loop of its most frequent token, which says nothing about the model.
    """
    t = cfg.train
    ids = torch.tensor([tokenizer.encode(t.sample_prompt)], device=model.device)
    sampling = {"do_sample": True, "temperature": t.sample_temperature, "top_k": t.sample_top_k} \
        if t.sample_temperature > 0 else {"do_sample": False}
    generator = torch.Generator(device=model.device).manual_seed(t.seed)
    model.eval()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=t.sample_tokens, return_dict_in_generate=True, generator=generator,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sampling)
    sequence = out.sequences[0].tolist()
    steps = out.executed_steps[0].float().tolist()
    return [(tok, steps[i] if i < len(steps) else None) for i, tok in enumerate(sequence)]


def _print_sample(tokenizer: Any, view: list[tuple[int, float | None]], prompt_len: int, K: int,
                  cfg: RunConfig) -> None:
    """The sample, each token coloured by the latent steps it used (ANSI on a terminal; digits otherwise)."""
    from ponderlm.inference.render import depth_view, legend_ansi, render_ansi

    how = (f"temperature {cfg.train.sample_temperature:g}, top-k {cfg.train.sample_top_k}"
           if cfg.train.sample_temperature > 0 else "greedy")
    ids, steps = [i for i, _ in view], [s for _, s in view if s is not None]
    if sys.stdout.isatty() and K > 0:
        print(f"sample ({how}):\n  {render_ansi(depth_view(tokenizer, ids, steps, prompt_len), K)}\n  {legend_ansi(K)}")
        return
    print(f"sample   {tokenizer.decode(ids, skip_special_tokens=True)!r}  ({how})")
    if K > 0:  # the steps each token used, in token order, where colours are not available
        print("steps    " + "".join(str(int(s)) for s in steps) + f"  (additional steps per consumed token, K={K})")
