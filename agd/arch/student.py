"""A derived student as an image model: the task's value convention, weights on disk.

Derived generators keep their teacher's convention: SR networks map [0, 1] to [0, 1]; translation
networks map [-1, 1] to [-1, 1] (tanh). :class:`Student` takes and returns [0, 1] images for both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from agd.arch.derive import derive
from agd.arch.genotype import Genotype
from agd.io import AgdError, atomic_path, load_checkpoint, unwrap_state_dict
from agd.space.config import OfSpace, SpaceConfig


class Student(OfSpace, nn.Module):
    def __init__(self, genotype: Genotype, net: nn.Module | None = None) -> None:
        super().__init__()
        self.genotype = genotype
        self.net = net if net is not None else derive(genotype)

    @property
    def config(self) -> SpaceConfig:
        return self.genotype.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return image_forward(self.net, x, self.task)


def image_forward(net: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    """Run a generator of the task's convention (derived network or supernet alike) on [0, 1] images and
    return [0, 1] images: translation networks see [-1, 1] (sides padded by reflection to a multiple of 4,
    the two stride-2 stages, and cropped back); SR networks see [0, 1] as they are. The search and
    ``Student`` both go through here, so the supernet is trained in the convention the derived student
    inherits its weights in."""
    if task == "translation":
        h, w = x.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        y = (net(x * 2 - 1) + 1) / 2
        return y[..., :h, :w]
    return net(x)


def save_weights(net: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp), metadata=metadata)
    return Path(path)


def load_student(genotype: Genotype | str | Path, weights: str | Path | None = None, device="cpu") -> Student:
    """A student from a genotype (object or JSON file) and optional weights (safetensors or a
    weights-only torch file of the derived network's state dict); without weights, seeded random ones."""

    g = genotype if isinstance(genotype, Genotype) else Genotype.load(genotype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # without weights: a seeded random init, the same on every call
        student = Student(g)
    if weights is not None:
        sd = unwrap_state_dict(load_checkpoint(weights), weights)
        missing, unexpected = student.net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise AgdError(f"student weights {weights}: do not fit the genotype (missing {list(missing)[:3]}, "
                           f"unexpected {list(unexpected)[:3]})")
    return student.to(device).eval()
