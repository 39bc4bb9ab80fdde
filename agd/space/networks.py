"""The two generator topologies. The same classes hold a supernet (their layers are mixed layers) and a
derived generator (their layers are plain blocks), so the wiring exists once."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agd.space.config import up_factors
from agd.space.space import SearchSpace


class ChainGenerator(nn.Module):
    """Layers applied in order (the translation generator: stem, downsampling, body, upsampling, head).
    Works in the teacher's convention: input and output in [-1, 1] (with ``input_skip="identity"`` the
    output is the input plus the head's tanh output, so it may leave [-1, 1] before clamping).

    ``input_skip="colour"``: the skip is ``skip(x)``, a learned 1x1 convolution (3x3 colour matrix and
    offset) that starts as the identity. A body whose first convolution is followed by an instance norm
    cannot see the input's global brightness and contrast, so with a plain identity skip the residual
    cannot undo them, while an instance-normalised teacher (CycleGAN) ignores them; the colour skip can
    (tools/translation_ceiling.py, BENCHMARKS.md). Its 9 MACs a pixel are counted by
    :func:`agd.cost.count_macs` but, like the SR bicubic skip, are not in the space's per-layer MACs."""

    def __init__(self, layers: nn.ModuleList, input_skip: str = "none") -> None:
        super().__init__()
        self.layers = layers
        self.input_skip = input_skip
        if input_skip == "colour":
            self.skip = nn.Conv2d(3, 3, 1)
            with torch.no_grad():
                self.skip.weight.copy_(torch.eye(3)[:, :, None, None])
                self.skip.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.layers:
            y = layer(y)
        if self.input_skip == "none":
            return y
        if y.shape[-2:] != x.shape[-2:]:  # sides not a multiple of 4 (Student pads them; a bare network may not)
            dh, dw = y.shape[-2] - x.shape[-2], y.shape[-1] - x.shape[-1]
            x = F.pad(x, (0, max(dw, 0), 0, max(dh, 0)), mode="replicate")[..., :y.shape[-2], :y.shape[-1]]
        return (self.skip(x) if self.input_skip == "colour" else x) + y


class SRGenerator(nn.Module):
    """ESRGAN-like: conv_first → cells (each ``x + cell_scale * cell(x)``) → conv_body + global skip →
    per upsampling round nearest upsampling by its factor and conv_up → conv_hr → conv_last, plus
    (``input_skip`` other than "none") the input upsampled by that interpolation to the total scale (the
    product of ``up_factors``: (2, 2) is x4, (3,) x3; :func:`agd.space.config.up_factors`). Images in [0, 1]."""

    def __init__(self, layers: nn.ModuleList, n_cells: int, layers_per_cell: int, up_factors: tuple[int, ...],
                 cell_scale: float = 0.2, input_skip: str = "none") -> None:
        super().__init__()
        if isinstance(up_factors, int) or any(not isinstance(f, int) or f < 2 for f in up_factors):
            raise ValueError(f"SRGenerator: up_factors {up_factors!r} must be a sequence of integers >= 2")
        up_factors = tuple(up_factors)
        if len(layers) != 1 + n_cells * layers_per_cell + 1 + len(up_factors) + 2:
            raise ValueError("SRGenerator: layer count does not match the cell layout")
        self.layers = layers
        self.n_cells, self.layers_per_cell, self.cell_scale = n_cells, layers_per_cell, cell_scale
        self.up_factors = up_factors
        self.input_skip = input_skip

    @property
    def n_up(self) -> int:
        """Number of upsampling rounds (conv_up layers)."""
        return len(self.up_factors)

    @property
    def scale(self) -> int:
        return math.prod(self.up_factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = iter(self.layers)
        fea = next(layers)(x)
        h = fea
        for _ in range(self.n_cells):
            y = h
            for _ in range(self.layers_per_cell):
                y = next(layers)(y)
            h = h + self.cell_scale * y
        fea = fea + next(layers)(h)
        for f in self.up_factors:
            fea = next(layers)(F.interpolate(fea, scale_factor=float(f), mode="nearest"))
        conv_hr, conv_last = next(layers), next(layers)
        out = conv_last(conv_hr(fea))
        if self.input_skip == "none":
            return out
        up = float(self.scale)
        if self.input_skip == "nearest":
            return out + F.interpolate(x, scale_factor=up, mode="nearest")
        return out + F.interpolate(x, scale_factor=up, mode=self.input_skip, align_corners=False)


def build_network(space: SearchSpace, layers: list[nn.Module]) -> nn.Module:
    """Wire layers (mixed or plain, in the space's order) into the space's generator topology."""
    c = space.config
    if space.kind == "translation":
        return ChainGenerator(nn.ModuleList(layers), input_skip=c.input_skip)
    return SRGenerator(nn.ModuleList(layers), c.n_cells, c.layers_per_cell, up_factors(c.scale),
                       input_skip=c.input_skip)


def init_residual_head(space: SearchSpace, last: nn.Module) -> None:
    """With an input skip, scale the last layer's fresh weights by 0.1: an untrained network then starts
    near the skip alone (bicubic upscaling, the identity) instead of adding noise to it."""
    if space.config.input_skip != "none":
        with torch.no_grad():
            for p in last.parameters():
                p.mul_(0.1)
