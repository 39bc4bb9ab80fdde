"""The search space (AutoGAN-Distiller's): what a generator may be made of.

A :class:`SearchSpace` is built from a config preset (:mod:`agd.space.config`); it knows each layer's
operators and widths, validates and costs a chosen architecture, and wires layers into the task's
topology (:mod:`agd.space.networks`). The search strategy lives in :mod:`agd.search` (the supernet's
relaxation, the engine, the budget); the chosen architecture, plain JSON, and the builder that turns it
into an ordinary ``nn.Module`` live in :mod:`agd.arch`.
"""

from agd.space.config import (
    PRESETS,
    SEARCH_OPS,
    SR_SCALES,
    TASK_DEFAULTS,
    SRSpaceConfig,
    TranslationSpaceConfig,
    get_config,
    sr_space_for_scale,
    task_default,
    up_factors,
    width_choices,
)
from agd.space.networks import build_network
from agd.space.space import LayerSpec, SearchSpace, build_op, op_valid

__all__ = [
    "PRESETS", "SEARCH_OPS", "SR_SCALES", "TASK_DEFAULTS", "LayerSpec", "SRSpaceConfig", "SearchSpace",
    "TranslationSpaceConfig", "build_network", "build_op", "get_config", "op_valid", "sr_space_for_scale", "task_default",
    "up_factors", "width_choices",
]
