"""The chosen architecture: a genotype (plain, versioned JSON) and the builders that turn it into an
ordinary ``nn.Module`` (:func:`derive`), an image model with weights on disk (:class:`Student`), and a
module on agd's compiled CPU ops (:func:`agd.arch.fast.convert`).

A genotype names one operator and width per layer of its :class:`agd.space.SearchSpace`; the space
validates and costs it, :mod:`agd.search` finds it, and nothing here depends on how it was found.
"""

from agd.arch.derive import derive
from agd.arch.genotype import Genotype, LayerChoice, macs_extremes, max_genotype, random_genotype
from agd.arch.student import Student, image_forward, load_student, save_weights

__all__ = [
    "Genotype", "LayerChoice", "Student", "derive", "image_forward", "load_student", "macs_extremes",
    "max_genotype", "random_genotype", "save_weights",
]
