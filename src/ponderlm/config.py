"""`PonderConfig`: one validated source of truth for backbone shape, method and pondering options.

The config is flat (like every Hugging Face config) so it round-trips through `config.json`;
fields are grouped below by who reads them. Method-specific fields are ignored by other methods.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from transformers import PretrainedConfig

from ponderlm.declared import Declared, declarations, option  # noqa: F401  (methods declare through here)
from ponderlm.registry import REGISTRY, method_class, method_names

BACKBONES = ("llama", "gpt_neox")
INIT_SCHEMES = ("ponder", "hf")
LATENT_FEEDBACK = ("post_norm", "pre_norm")


def __getattr__(name: str) -> tuple[str, ...]:
    """Views of the method registry: `METHODS` (every registered method), `ADAPTIVE_METHODS` (per-token depth)."""
    if name == "METHODS":
        return method_names()
    if name == "ADAPTIVE_METHODS":
        return method_names(adaptive=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def reject(msg: str) -> NoReturn:
    """Raise the config's one-line ValueError naming a bad value."""
    raise ValueError(f"PonderConfig: {msg}")


def check(config: Any, name: str, kind: Any = float, nullable: bool = False, **checks: Any) -> None:
    """`reject` unless config.<name> passes the checks of a declared option (`Declared`), naming all of them."""
    declared, value = Declared(name, None, kind, nullable, **checks), getattr(config, name)
    if declared.problem(value) is not None:
        reject(f"{name} must be {declared.what()}, got {value!r}")


def method_options() -> dict[str, Any]:
    """Every registered method's options (its `Options` dataclass) with their defaults."""
    return {name: d.default for cls in REGISTRY.values() for name, d in declarations(cls.Options).items()}


class PonderConfig(PretrainedConfig):
    """Configuration of a pondering language model.

    Args (backbone):
        backbone: "llama" (RMSNorm, SwiGLU, RoPE) or "gpt_neox" (LayerNorm, parallel residual,
            partial rotary, GELU, biases).
        vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
        num_key_value_heads, head_dim, max_position_embeddings, rope_theta, rotary_pct,
        rms_norm_eps, layer_norm_eps, hidden_act, attention_bias, mlp_bias, use_parallel_residual,
        tie_word_embeddings, initializer_range: as in the Hugging Face Llama / GPT-NeoX configs
            (input and output embeddings are untied by default, as in the official PonderLM-2 configs).
        init: "ponder" (default, every method): the official PonderLM-2 / PonderingLM scheme, a truncated
            normal (+-3 std) with std sqrt(2 / (5 d)) for embeddings and linear weights, the residual output
            projections further divided by sqrt(2 L) (Llama, every method) or sqrt(2 L (K+1)) (GPT-NeoX);
            "hf": the Hugging Face normal(0, initializer_range). Method modules keep their own rules.

    Args (pondering, all methods):
        method: a registered method (`METHODS`: vanilla, pause, looped, ponderlm, ponderlm2, ponderlm3,
            adaponder, latent_cot).
        max_steps: K, the maximum number of *additional* steps per token (0 for vanilla).
        embed_scale: multiplier of token embeddings; None = method default (its `embed_scale_factor`: sqrt(2.5 d)
            for the interleaved methods and looped, sqrt(d) for pause, ponderlm and adaponder, 1 for vanilla).
        latent_feedback: what a latent slot of the interleaved methods receives from the slot before it:
            "post_norm" (default, as in the papers) the hidden state after the final norm, or "pre_norm"
            the residual stream before it. Readouts (LM head, routers) always read post-norm states.
            pre_norm is rejected for methods without latent slots (vanilla, looped, ponderlm, adaponder).

    Method options (keyword arguments too, stored flat like every field): declared with their defaults and
    checks by each method's `Options` (methods/<name>.py; `method_options()` lists them all), inference knobs
    among them (tau, alpha, depth_policy, ...: `option(..., knob=True)`); every config carries every
    registered method's.
    """

    model_type = "ponder"
    keys_to_ignore_at_inference = ["past_key_values"]
    # Special token ids: None unless given (a run's final/ takes them from its tokenizer, `from_backbone` from
    # the Hugging Face config), so `config.eos_token_id` reads None instead of raising, as on HF configs.
    bos_token_id = None
    eos_token_id = None
    pad_token_id = None

    def __init__(
        self,
        backbone: str = "llama",
        method: str = "vanilla",
        vocab_size: int = 8192,
        hidden_size: int = 256,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 2048,
        rope_theta: float = 10000.0,
        rotary_pct: float | None = None,
        rms_norm_eps: float = 1e-6,
        layer_norm_eps: float = 1e-5,
        hidden_act: str | None = None,
        attention_bias: bool | None = None,
        mlp_bias: bool | None = None,
        use_parallel_residual: bool = True,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        init: str = "ponder",
        # pondering, shared
        max_steps: int = 0,
        embed_scale: float | None = None,
        latent_feedback: str = "post_norm",
        **kwargs: Any,  # method options (see the class docstring) and Hugging Face config fields
    ) -> None:
        self.backbone = backbone
        self.method = method
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.head_dim = head_dim if head_dim is not None else (
            hidden_size // num_attention_heads if num_attention_heads else 0
        )
        is_llama = backbone == "llama"
        if intermediate_size is None:
            # Llama: SwiGLU width ~ 8/3 d rounded to 64; NeoX: 4 d.
            intermediate_size = 64 * math.ceil(8 * hidden_size / 3 / 64) if is_llama else 4 * hidden_size
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rotary_pct = rotary_pct if rotary_pct is not None else (1.0 if is_llama else 0.25)
        self.rms_norm_eps = rms_norm_eps
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act if hidden_act is not None else ("silu" if is_llama else "gelu")
        self.attention_bias = attention_bias if attention_bias is not None else not is_llama
        self.mlp_bias = mlp_bias if mlp_bias is not None else not is_llama
        self.use_parallel_residual = use_parallel_residual
        self.initializer_range = initializer_range
        self.init = init

        self.max_steps = max_steps
        self.embed_scale = embed_scale
        self.latent_feedback = latent_feedback
        for name, default in method_options().items():  # tuples become lists, as config.json reads them back
            value = kwargs.pop(name, default)
            setattr(self, name, list(value) if isinstance(value, tuple) else value)

        kwargs.setdefault("use_cache", True)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate()

    # ------------------------------------------------------------------ derived values
    @property
    def method_class(self) -> Any:
        """The registered `PonderMethod` subclass of `method`: what generic code asks for method facts."""
        return method_class(self.method)

    @property
    def default_embed_scale(self) -> float:
        factor = self.method_class.embed_scale_factor
        return 1.0 if factor is None else math.sqrt(factor * self.hidden_size)

    def init_std(self, residual_output: bool = False) -> float:
        """Std of the "ponder" init for an embedding / linear weight (see the class docstring)."""
        std = math.sqrt(2.0 / (5 * self.hidden_size))
        if residual_output:
            # The official GPT-NeoX files also divide by the K+1 passes; every official Llama file (PonderLM v1's
            # included) divides by sqrt(2 L) only.
            over_passes = self.backbone == "gpt_neox"
            std /= math.sqrt(2.0 * self.num_hidden_layers * (self.max_steps + 1 if over_passes else 1))
        return std

    @property
    def resolved_embed_scale(self) -> float:
        return float(self.embed_scale) if self.embed_scale is not None else self.default_embed_scale

    @property
    def num_slots_per_token(self) -> int:
        """Slots per token in the interleaved layout (1 for methods that do not interleave)."""
        return self.max_steps + 1 if self.method_class.interleaved else 1

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise one `ValueError` naming the first bad value: the backbone's shape, then the pondering fields;
        the method checks what it needs (`validate_config`) and every registered method its options."""
        self._validate_backbone()
        if self.method not in REGISTRY:
            reject(f"unknown method {self.method!r}; choose one of {', '.join(method_names())}")
        check(self, "max_steps", int, low=0)
        self.method_class.validate_config(self)
        check(self, "embed_scale", nullable=True, low=0, low_open=True)
        check(self, "init", str, choices=INIT_SCHEMES)
        check(self, "latent_feedback", str, choices=LATENT_FEEDBACK)
        checked = set()
        for cls in REGISTRY.values():  # the declared checks of every option once, then each method's own rules
            for name, declared in declarations(cls.Options).items():
                if name not in checked and (problem := declared.problem(getattr(self, name))) is not None:
                    reject(problem)
                checked.add(name)
            cls.validate_options(self)

    def _validate_backbone(self) -> None:
        if self.backbone not in BACKBONES:
            reject(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                reject(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            reject(f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            reject(f"num_key_value_heads ({self.num_key_value_heads}) must divide "
                   f"num_attention_heads ({self.num_attention_heads})")
        if self.backbone == "gpt_neox" and self.num_key_value_heads != self.num_attention_heads:
            reject("gpt_neox does not support grouped-query attention (num_key_value_heads != num_attention_heads)")
        if self.head_dim % 2 != 0:
            reject(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        check(self, "rotary_pct", low=0, high=1, low_open=True)
        check(self, "hidden_act", str, choices=("silu", "gelu", "gelu_new", "gelu_fast", "relu"))
        for name in ("rope_theta", "rms_norm_eps", "layer_norm_eps"):
            check(self, name, low=0, low_open=True)
        check(self, "initializer_range")
