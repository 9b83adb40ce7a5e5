"""Pondering methods: one small policy module each, registered by name on the shared backbone."""

from ponderlm.methods import adaponder, latent_cot, looped, pause, ponderlm2, ponderlm3, vanilla  # noqa: F401  (registration side effects)
from ponderlm.methods.base import METHOD_REGISTRY, DecodeState, MethodOutput, PonderMethod, register_method
from ponderlm.registry import method_class


def build_method(config) -> PonderMethod:
    return method_class(config.method)(config)


__all__ = ["METHOD_REGISTRY", "DecodeState", "MethodOutput", "PonderMethod", "build_method", "register_method"]
