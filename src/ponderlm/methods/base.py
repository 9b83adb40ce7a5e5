"""What a method is: a small policy module on the shared backbone.

A method decides how slots / passes are formed, what feeds back, how depth is decided and how
outputs fuse. It owns its extra parameters (router, gates, pause vectors) and never contains a
transformer block. Two entry points must agree exactly:

- `forward(backbone, input_ids, attention_mask)`: the parallel training/eval path (Jacobi, dense
  passes, 2-D masks...), returning final hidden states, executed steps and an auxiliary loss;
- `decode_token(backbone, state, input_ids, valid)`: the sequential, KV-cached path used by
  `ponderlm.inference.sequential_logits` and `generate`, computing only the steps it executes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn

from ponderlm.backbone.attention import NEG_INF, additive_mask
from ponderlm.backbone.cache import SlotKVCache
from ponderlm.backbone.interface import Backbone
from ponderlm.backbone.packing import gather_tokens, pack_active, scatter_tokens  # noqa: F401  (used by methods)
from ponderlm.config import Declared, PonderConfig, declarations, reject
from ponderlm.methods.options import DecodeOptions
from ponderlm.registry import REGISTRY as METHOD_REGISTRY  # noqa: F401  (re-exported by ponderlm.methods)
from ponderlm.registry import method_names, register_method  # noqa: F401  (methods register with @register_method)


@dataclass
class MethodOutput:
    """hidden [B,T,D]: the state the LM head reads for each token (None if `logits` is given).
    executed_steps [B,T]: additional steps really computed per token (0 at padding)."""

    hidden: torch.Tensor | None
    executed_steps: torch.Tensor
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class RowState:
    """Per-row decode state: each row's next slot input [B,D], that slot's depth in its token [B] and whether
    the row has a slot to run [B]. Methods subclass it with their per-token tensors (leading batch dim)."""

    inputs: torch.Tensor
    depth: torch.Tensor
    busy: torch.Tensor

    @classmethod
    def empty(cls, batch: int, hidden_size: int, device: torch.device, dtype: torch.dtype, **extra) -> RowState:
        return cls(inputs=torch.zeros(batch, hidden_size, device=device, dtype=dtype),
                   depth=torch.zeros(batch, dtype=torch.long, device=device),
                   busy=torch.zeros(batch, dtype=torch.bool, device=device), **extra)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def reorder(self, index: torch.Tensor) -> None:
        """Row b continues from row index[b] (beam search)."""
        for name, value in self.tensors().items():
            setattr(self, name, value.index_select(0, index))


@dataclass
class SlotRows(RowState):
    """`RowState` plus the slot states h^(0..k) of each row's current token [B,K+1,D], fused at its readout."""

    slots: torch.Tensor

    def store(self, hidden: torch.Tensor) -> torch.Tensor:
        """Write each busy row's new slot state at slots[b, depth_b]; returns the slots [B,K+1,D]."""
        rows = torch.arange(self.busy.shape[0], device=self.busy.device)
        slots = self.slots.clone()  # replaced, not written in place: callers may hold the old tensor
        slots[rows, self.depth] = torch.where(self.busy[:, None], hidden, slots[rows, self.depth])
        self.slots = slots
        return slots


@dataclass
class DecodeState:
    """Per-sequence decoding state: caches, next position id per row, the per-row schedule, optional traces."""

    caches: list[SlotKVCache]
    next_position: torch.Tensor  # [B] long
    options: DecodeOptions  # the knob values this decode runs with (`DecodeOptions.resolve`)
    rows: RowState | None = None  # created on first use by per-slot methods (`PonderMethod.row_state`)
    # Lockstep decoding collects the predicting state of each row here as its token completes and runs the LM
    # head once per token (None: completing rows get their logits at once, as continuous batching needs).
    readout: torch.Tensor | None = None
    # If a list, decode_token appends per-token slot hidden states [B, n_slots, D] (Jacobi RMSE, analyses).
    slot_trace: list[torch.Tensor] | None = None
    # Single-slot backbone calls made and batch rows they computed (tests count them to prove
    # pruned slots never run).
    backbone_calls: int = 0
    rows_computed: int = 0

    @property
    def cache(self) -> SlotKVCache:
        return self.caches[0]

    def reorder(self, index: torch.Tensor) -> None:
        """Row b continues from row index[b] (index [B] long): beam search reorders the cache per beam."""
        for cache in self.caches:
            cache.reorder(index)
        self.next_position = self.next_position.index_select(0, index)
        if self.rows is not None:
            self.rows.reorder(index)
        if self.slot_trace is not None:
            self.slot_trace = [t.index_select(0, index) for t in self.slot_trace]

    # Row surgery for a server batch: requests join and leave between backbone calls, each operation leaving every
    # other row untouched (the caches do the tensor work). Attention only ever sees a row's own finite-bias entries
    # in their order, so a spliced row decodes exactly as it would alone.
    def splice_row(self, row: int, src: DecodeState, src_row: int = 0) -> None:
        """Put row `src_row` of a prefilled state into row `row` (its entries at the row's start, any previous
        content invisible), idle until its next token starts."""
        for cache, src_cache in zip(self.caches, src.caches, strict=True):
            cache.copy_row(row, src_cache, src_row)
        self.next_position[row] = src.next_position[src_row]
        self._set_idle(row)

    def release_row(self, row: int) -> None:
        """The row holds no request any more (finished or cancelled): its entries become invisible, it is idle."""
        for cache in self.caches:
            cache.hide_row(row)
        self._set_idle(row)

    def _set_idle(self, row: int) -> None:
        if self.rows is not None:  # methods replace these tensors rather than writing in place; do the same
            busy = self.rows.busy.clone()
            busy[row] = False
            self.rows.busy = busy

    def grow_rows(self, batch: int, fresh_rows: RowState | None) -> None:
        """Have `batch` rows (more than now); the new ones are empty and idle, their per-row state taken from
        `fresh_rows` (the method's initial values for `batch` rows, not zeros: e.g. gates start at one)."""
        old = self.next_position.shape[0]
        for cache in self.caches:
            cache.add_rows(batch)
        position = self.next_position.new_zeros(batch)
        position[:old] = self.next_position
        self.next_position = position
        if self.rows is not None:
            for name, value in self.rows.tensors().items():
                getattr(fresh_rows, name)[:old] = value
            self.rows = fresh_rows

    def compact(self) -> None:
        """Drop invisible entries (each row keeps its visible ones, in order), so a server that never drains does
        not attend over an ever-growing column count."""
        for cache in self.caches:
            cache.compact()


def padding_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: the t-th real token of a row gets position t (left or right padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def decode_mask(cache: SlotKVCache, allowed_extra: torch.Tensor | None = None) -> torch.Tensor:
    """Additive mask [B,1,Q,N] for the Q reserved entries of `cache` attending to all entries.

    A key is visible if its bias is finite, it is not a later reserved entry, and `allowed_extra`
    ([B,Q,N] bool, e.g. a depth predicate) allows it. A query always sees its own entry.
    """
    meta = cache.entry_view()
    bias = meta["bias"]
    total = bias.shape[1]
    start = cache.length
    count = total - start
    idx = torch.arange(total, device=bias.device)
    q_idx = start + torch.arange(count, device=bias.device)
    allowed = (idx[None, :] <= q_idx[:, None])[None] & torch.isfinite(bias)[:, None, :]
    if allowed_extra is not None:
        allowed = allowed & allowed_extra
    allowed = allowed | (idx[None, :] == q_idx[:, None])[None]
    return additive_mask(allowed, torch.where(torch.isfinite(bias), bias, torch.zeros_like(bias)))


def prompt_positions(state: DecodeState, valid: torch.Tensor) -> torch.Tensor:
    """Position ids [B,T] that T `decode_token` calls would give a prompt: the row's next position plus
    the number of real tokens before t (a padding token sits at the next real token's position)."""
    before = valid.long().cumsum(-1) - valid.long()
    return state.next_position[:, None] + before


class PonderMethod(nn.Module):
    """Base class. Subclasses register with `@register_method("name")`.

    A method class is the one owner of what is method-specific. Besides the model code, it declares facts,
    options and a cost model that need only the config (no model), which the config, FLOPs accounting,
    `plan`, training and evaluation ask instead of switching on method names.
    """

    name = "base"
    adaptive = False  # decides a per-token depth (its cost depends on the depths it decides)
    interleaved = False  # K latent slots after each token (K+1 slots per token); latent_feedback=pre_norm applies
    takes_steps = True  # needs max_steps >= 1 (False: max_steps must be 0)
    variable_passes = False  # the number of passes depends on the data (DDP must look for unused parameters)
    head_feedback = False  # each extra pass is fed by an LM-head readout (its logits stay alive for backward)
    embed_scale_factor: float | None = None  # default embed_scale: sqrt(factor * d); None = 1
    stand_in_options: dict[str, Any] = {}  # config options of an untrained stand-in model (`bench decode`)
    freeze_backbone = None  # (model) -> handle with .restore(): `train.freeze_backbone_steps` trains the method alone

    @dataclass
    class Options:
        """The method's own config fields and defaults: flat in `PonderConfig` and config.json, like every field
        (every config carries every registered method's options). Subclasses extend it with annotated fields
        (`class Options(PonderLM2.Options): ...`), made a dataclass by `__init_subclass__`, declared with
        `ponderlm.config.option` (checks, help; `knob=True`: an inference knob)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in vars(cls):
            cls.Options = dataclass(cls.Options)

    @classmethod
    def knobs(cls) -> dict[str, Declared]:
        """The inference knobs this method declares (`option(..., knob=True)`), in declaration order."""
        return {name: d for name, d in declarations(cls.Options).items() if d.knob}

    @classmethod
    def validate_options(cls, config: PonderConfig) -> None:
        """Cross-field rules on this class's options on `config` (every registered method's, after the declared
        checks); `reject` if bad."""

    @classmethod
    def check_knobs(cls, given: dict[str, Any], config: PonderConfig | None = None) -> None:
        """Rules on the knob values a caller gives (config: the resolved ones, None before a model is loaded)."""

    @classmethod
    def fixed_depth_knobs(cls, policy: str, target: float | None = None) -> dict[str, Any] | None:
        """Knob values that draw depths independently of content ('uniform' | 'geometric' with mean `target`,
        'constant') or restore the method's own ('learned'); None: it decides no per-token depth."""
        return None

    @classmethod
    def validate_config(cls, config: PonderConfig) -> None:
        """Check that `config` (of this method) asks for things the method can do; `reject` if not."""
        K = config.max_steps
        if not cls.takes_steps and K != 0:
            reject(f"method {cls.name!r} takes no additional steps, got max_steps={K}")
        if cls.takes_steps and K == 0:
            reject(f"method {cls.name!r} needs max_steps >= 1")
        if config.latent_feedback == "pre_norm" and not cls.interleaved:  # ignoring it would fake a pre_norm result
            reject(f"latent_feedback='pre_norm' needs an interleaved method "
                   f"({', '.join(method_names(interleaved=True))}); method {cls.name!r} has no latent slots")

    # -- cost model (ponderlm.flops; docs/COMPUTE.md) ------------------------------------------------
    @classmethod
    def parallel_cost(cls, config: PonderConfig, costs: Any, T: int, a: list[float], sweeps: float,
                      training: bool) -> tuple[list[Any], list[tuple[float, bool]]]:
        """One parallel forward on T tokens: its backbone passes (`ponderlm.flops.Pass`) and its matmul FLOPs per
        token outside the stack and the readout LM head, as [(flops, differentiated)]. a[k]: share of tokens
        executing step k (k = 0..K); sweeps: Jacobi R; training: a train-mode forward. costs: `flops.Costs`."""
        raise ValueError(f"flops: method {cls.name!r} has no cost model")

    @classmethod
    def sweeps(cls, config: PonderConfig, training: bool, peak: bool = False) -> float:
        """Solver sweeps R that `parallel_cost` is charged for: eval mode's, the mean over a training step's draws,
        or (peak, for activation memory) the largest draw. 0: the method solves nothing iteratively."""
        return 0

    @classmethod
    def decode_cost(cls, config: PonderConfig, costs: Any, a: list[float]) -> float:
        """Matmul FLOPs of decoding one token outside the stack and the LM head (routers, gates, feedback)."""
        return 0.0

    @classmethod
    def decode_keys(cls, config: PonderConfig, T: int, a: list[float]) -> float:
        """Average keys attended per token while decoding a T-token sequence (all its executed slots)."""
        n = sum(a)  # one shared cache: slot j of token t sees t * n earlier entries + j + 1 (itself included)
        return n * n * (T - 1) / 2 + sum(a[j] * (j + 1) for j in range(len(a)))

    def spread_stand_in(self, scale: float) -> None:
        """Make an untrained stand-in model (`bench decode`) decide varied depths; `scale` sets how varied."""

    def __init__(self, config: PonderConfig) -> None:
        super().__init__()
        self.config = config
        self.training_progress = 0

    # -- parallel path ---------------------------------------------------------------------------
    def forward(
        self, backbone: Backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None, options: DecodeOptions | None = None,  # the knob values; None: saved
    ) -> MethodOutput:
        raise NotImplementedError

    def options_or_saved(self, options: DecodeOptions | None) -> DecodeOptions:
        return options if options is not None else DecodeOptions.resolve(self.config)

    # (backbone, input_ids, attention_mask, sweeps, options) -> the slot states [B,T,n,D] of the parallel path's
    # iterative solver after stage building and after each sweep (the Jacobi analysis); None: it solves nothing.
    solver_trace = None

    # -- sequential path -------------------------------------------------------------------------
    def num_caches(self) -> int:
        return 1

    def new_decode_state(
        self, backbone: Backbone, batch_size: int, capacity: int, device: torch.device, dtype: torch.dtype,
        options: DecodeOptions | None = None,
    ) -> DecodeState:
        cfg = self.config
        caches = [
            SlotKVCache(cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, cfg.head_dim,
                        capacity=capacity, device=device, dtype=dtype)
            for _ in range(self.num_caches())
        ]
        return DecodeState(caches=caches, next_position=torch.zeros(batch_size, dtype=torch.long, device=device),
                           options=self.options_or_saved(options))

    def prefill(
        self, backbone: Backbone, state: DecodeState, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Consume a whole prompt (input_ids [B,T], attention_mask [B,T]); return (logits [B,T,V], steps [B,T]).

        Must leave `state` exactly as T calls of `decode_token` would (same cache entries up to
        packing filler, same positions), so decoding continues identically. This default *is* those
        T calls; methods whose slots do not depend on later slots of earlier tokens override it with
        a few parallel passes (vanilla, pause, looped, PonderLM v1, AdaPonderLM, latent CoT).
        """
        valid = attention_mask.bool()
        logits, steps = [], []
        for t in range(input_ids.shape[1]):
            out, s = self.decode_token(backbone, state, input_ids[:, t], valid[:, t])
            logits.append(out)
            steps.append(s)
        return torch.stack(logits, 1), torch.stack(steps, 1)

    # -- per-slot decode policy (lockstep decoding and continuous batching of mixed depths) ----------
    # Methods that decide depth per token describe their decode as a per-slot policy: `row_start` begins a
    # token in some rows, `row_slot` says what the next slot of each row looks like (key bias, visibility),
    # `row_finish` consumes the slot just computed and says which rows' tokens are complete. `step_rows`
    # runs one backbone call from them, advancing every busy row by one slot of its own token: row b may
    # compute step 2 of its token while row c starts a new one (continuous batching). Lockstep decoding
    # (`decode_token`) is the same policy with every row starting together, so each algorithm is written
    # once. The per-row state is a typed `RowState` (a method-specific subclass) in `state.rows`.
    # Why continuous batching: lockstep runs a token's step k whenever *any* row needs it, which saves FLOPs
    # but not calls, and at small and medium sizes a call's fixed cost dominates. Decoupled rows need about
    # T(1 + average steps) calls, and every cache entry belongs to its row (no invisible skipped-step entries).
    supports_row_schedule = False

    def new_rows(self, batch: int, device: torch.device, dtype: torch.dtype) -> RowState:
        """A fresh, idle per-row state for `batch` rows (methods with per-token tensors return a subclass)."""
        return RowState.empty(batch, self.config.hidden_size, device, dtype)

    def row_state(self, backbone: Backbone, state: DecodeState) -> RowState:
        """The per-row state of `state`, created on first use."""
        if state.rows is None:
            state.rows = self.new_rows(state.next_position.shape[0], state.next_position.device, backbone.dtype)
        return state.rows

    def row_start(self, backbone: Backbone, state: DecodeState, token_ids: torch.Tensor,
                  rows: torch.Tensor) -> None:
        """Begin a new token (token_ids [B]) at slot 0 in the rows where `rows` [B] bool is set."""
        row = self.row_state(backbone, state)
        row.inputs = torch.where(rows[:, None], backbone.embed(token_ids), row.inputs)
        row.depth = torch.where(rows, 0, row.depth)
        row.busy = row.busy | rows

    def row_slot(self, state: DecodeState) -> tuple[torch.Tensor, Any]:
        """Key bias [B] of each row's next slot and its visibility predicate (an `allowed_extra_fn` or None)."""
        raise NotImplementedError

    def row_finish(self, backbone: Backbone, state: DecodeState, hidden: torch.Tensor,
                   feedback: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Consume the slot just computed (hidden [B,D]: its post-norm state, busy rows only; feedback [B,D]:
        what the token's next latent slot takes as input, see `final_norm`, None = hidden). Returns (done [B]
        bool: the row's token is complete, logits [B,V] of those rows (None if none), executed steps [B])."""
        raise NotImplementedError

    def complete_rows(self, backbone: Backbone, state: DecodeState, done: torch.Tensor,
                      readout: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """End of `row_finish`: the rows whose token is complete (`done` [B]) get LM-head logits of `readout()`
        (their predicting states; computed for those rows only) and move to their next position; the other busy
        rows go on to their token's next slot. Returns the logits [B,V] (None if no row completed)."""
        row = state.rows
        logits = None
        if bool(done.any()):
            if state.readout is not None:
                state.readout = torch.where(done[:, None], readout().to(state.readout.dtype), state.readout)
            else:
                logits = self.rows_logits(backbone, readout(), done)
            state.next_position += done.long()
        going_on = row.busy & ~done
        row.depth = torch.where(going_on, row.depth + 1, row.depth)
        row.busy = going_on
        return logits

    def step_rows(self, backbone: Backbone, state: DecodeState
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One backbone call: the next slot of every busy row. Returns `row_finish`'s (done, logits, steps)."""
        row = state.rows
        bias, visible = self.row_slot(state)
        bias = torch.where(row.busy, bias, NEG_INF).float()
        out = self.run_cached_slot(backbone, state, row.inputs, row.depth[:, None], bias,
                                   allowed_extra_fn=visible, active=row.busy, apply_norm=self.feedback_apply_norm)
        hidden = self.final_norm(backbone, out)
        if state.slot_trace is not None:
            state.slot_trace.append(torch.where(row.busy[:, None], hidden, torch.zeros_like(hidden)))
        # The post-norm state feeds the readouts; `out` (the residual stream under pre_norm) the next latent slot.
        return self.row_finish(backbone, state, hidden, out)

    def decode_token(
        self, backbone: Backbone, state: DecodeState, input_ids: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Consume one token per row (input_ids [B], valid [B] bool); return (logits [B,V], executed steps [B]).

        Fixed-depth methods override it with their own slot loop. For per-slot methods this is lockstep
        decoding: every valid row starts its token, then `step_rows` runs until all are complete, so step k
        runs (for the rows that need it) while any row does, and a row whose token is complete is not
        computed; the LM head runs once, on every row's predicting state. With `state.slot_trace` a list, it
        receives the slot states [B, calls, D] of the token (zeros for rows that ran no slot in a call)."""
        if not self.supports_row_schedule:
            raise NotImplementedError
        row = self.row_state(backbone, state)
        if bool(row.busy.any()):
            raise RuntimeError("decode_token needs every row between tokens (a per-row schedule is mid-token)")
        trace, calls = state.slot_trace, len(state.slot_trace) if state.slot_trace is not None else 0
        self.row_start(backbone, state, input_ids, valid)
        state.readout = row.inputs.new_zeros(row.inputs.shape)  # one LM-head call per token, after all rows
        steps = torch.zeros(valid.shape, device=valid.device)
        try:
            while bool(row.busy.any()):
                done, _, s = self.step_rows(backbone, state)
                steps = torch.where(done, s.float(), steps)
            logits = backbone.head(state.readout)
        finally:
            state.readout = None
        if trace is not None:
            trace[calls:] = [torch.stack(trace[calls:], dim=1)]
        return logits, steps * valid

    def decode_capacity(self, num_tokens: int) -> int:
        """Cache entries needed for `num_tokens` tokens at full depth (caches grow if exceeded)."""
        return num_tokens * self.config.num_slots_per_token

    # -- helpers shared by methods ---------------------------------------------------------------
    @property
    def feedback_apply_norm(self) -> bool:
        """Whether passes whose outputs feed latent slots apply the final norm (`latent_feedback`).

        "post_norm" (the papers): yes, and their outputs are the post-norm states everything reads.
        "pre_norm": no, such passes return the residual stream, which the next latent slot takes as
        input, and `final_norm` turns it into the post-norm state every readout (LM head, routers,
        fusion) still reads. One flag and one helper, so each path keeps a single loop; post_norm
        runs exactly the ops it always did (`final_norm` is then the identity).
        """
        return self.config.latent_feedback != "pre_norm"

    def final_norm(self, backbone: Backbone, out: torch.Tensor) -> torch.Tensor:
        """Post-norm state of the output of a pass run with `apply_norm=self.feedback_apply_norm`.

        A row or slot that was not computed returns its input (a previous slot's output in the same
        form), so its post-norm state is the previous slot's, exactly as with post_norm feedback."""
        return out if self.feedback_apply_norm else backbone.norm(out)

    @staticmethod
    def run_cached_slot(
        backbone: Backbone,
        state: DecodeState,
        inputs: torch.Tensor,
        depth: int,
        bias: torch.Tensor,
        cache_index: int = 0,
        allowed_extra_fn=None,
        depth_last: torch.Tensor | int | None = None,
        active: torch.Tensor | None = None,
        apply_norm: bool = True,
    ) -> torch.Tensor:
        """Append one slot per row (inputs [B,D]) at the rows' current position and run the backbone on it.

        bias [B]: the new key's bias (-inf for rows that do not own the slot). active [B] bool: if
        given, only those rows are computed (others must have bias -inf; their returned hidden state
        is the input, unchanged). Returns hidden [B,D] (the residual stream if not `apply_norm`).
        """
        cache = state.caches[cache_index]
        position = state.next_position[:, None]
        rows = None
        if active is not None and not bool(active.all()):
            rows = active.nonzero()[:, 0]
        cache.reserve(position, depth, bias[:, None], depth_last=depth_last, rows=rows)
        if rows is not None and rows.numel() == 0:  # no row owns this slot: an invisible entry, no compute
            cache.commit()
            return inputs
        extra = allowed_extra_fn(cache) if allowed_extra_fn is not None else None
        mask = decode_mask(cache, extra)
        if rows is None:
            hidden = backbone.run(inputs[:, None], position, mask, cache=cache, apply_norm=apply_norm)[:, 0]
        else:
            # The mask keeps every row if the cache attends over the whole batch (see SlotKVCache.reserve).
            rows_mask = mask if cache.full_batch_attention else mask[rows]
            out = backbone.run(inputs[rows, None], position[rows], rows_mask, cache=cache, apply_norm=apply_norm)[:, 0]
            hidden = inputs.index_copy(0, rows, out.to(inputs.dtype))
        cache.commit()
        state.backbone_calls += 1
        state.rows_computed += inputs.shape[0] if rows is None else int(rows.numel())
        return hidden

    @staticmethod
    def run_cached_block(
        backbone: Backbone,
        state: DecodeState,
        inputs: torch.Tensor,
        positions: torch.Tensor,
        depth: torch.Tensor | int,
        bias: torch.Tensor,
        cache_index: int = 0,
        allowed_extra_fn=None,
        apply_norm: bool = True,
    ) -> torch.Tensor:
        """Append n slots per row (inputs [B,n,D] at positions [B,n]) and run the backbone on all of them at once.

        The parallel-prefill counterpart of `run_cached_slot`. Within the block, slot order is causal
        order (a slot sees the block's earlier slots); across the cache, a key is also only visible if
        its position is <= the query's, because a prefill may have cached deeper slots of *later* tokens
        in an earlier block (depth-major passes). bias [B,n]: -inf for slots a row does not own.
        """
        cache = state.caches[cache_index]
        cache.reserve(positions, depth, bias)
        meta = cache.entry_view()
        allowed = meta["position"][:, None, :] <= positions[:, :, None]
        if allowed_extra_fn is not None:
            allowed = allowed & allowed_extra_fn(cache)
        hidden = backbone.run(inputs, positions, decode_mask(cache, allowed), cache=cache, apply_norm=apply_norm)
        cache.commit()
        state.backbone_calls += 1
        state.rows_computed += inputs.shape[0] * inputs.shape[1]
        return hidden

    @staticmethod
    def rows_logits(backbone: Backbone, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """LM-head logits [B,V] computed only for `rows` [B] bool (zeros elsewhere): in a per-row schedule
        few rows finish a token per call, and the head costs as much as a layer at small sizes."""
        index = rows.nonzero()[:, 0]
        out = backbone.head(hidden.index_select(0, index))
        return out.new_zeros(hidden.shape[0], out.shape[-1]).index_copy(0, index, out)

    def full_steps(self, valid: torch.Tensor) -> torch.Tensor:
        """Executed steps of a method that runs every token at full depth: K at real tokens, 0 at padding."""
        return float(self.config.max_steps) * valid.float()

    @staticmethod
    def token_bias(valid: torch.Tensor) -> torch.Tensor:
        """Key bias of a token's slots: 0 for real tokens, -inf for padding."""
        return torch.where(valid, 0.0, NEG_INF).float()

    def set_training_progress(self, step: int) -> None:
        self.training_progress = step
