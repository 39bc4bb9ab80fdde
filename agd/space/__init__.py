"""Search spaces, supernets, genotypes and derived generators (AutoGAN-Distiller's search space).

The space (:class:`SearchSpace`, built from a config preset), the search strategy (the supernet's
sampling modes, driven by the search engine) and the chosen architecture (:class:`Genotype`, plain JSON)
are separate; :func:`derive` turns a genotype into an ordinary ``nn.Module``.
"""

from agd.space.config import (
    PRESETS, SEARCH_OPS, SR_SCALES, SR_SPACE_FOR_SCALE, SRSpaceConfig, TranslationSpaceConfig, get_config,
    sr_space_for_scale, up_factors, width_choices,
)
from agd.space.derive import derive
from agd.space.genotype import Genotype, LayerChoice
from agd.space.space import LayerSpec, SearchSpace, build_op, op_valid
from agd.space.supernet import MixedLayer, Sampling, Supernet, TemperatureSchedule, build_network

__all__ = [
    "PRESETS", "SEARCH_OPS", "SR_SCALES", "SR_SPACE_FOR_SCALE", "Genotype", "LayerChoice", "LayerSpec", "MixedLayer",
    "SRSpaceConfig", "Sampling",
    "SearchSpace", "Supernet", "TemperatureSchedule", "TranslationSpaceConfig", "build_network", "build_op",
    "derive", "get_config", "op_valid", "sr_space_for_scale", "up_factors", "width_choices",
]
