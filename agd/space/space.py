"""A search space: its layers, their choices, and what can be computed without any network weights
(number of architectures, MACs of any choice, the MACs extremes, random and validated genotypes)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch
from torch import nn

from agd.io import AgdError
from agd.space.blocks import ConvNormAct, DwsBlock, Identity, ResBlock, Style, conv_out
from agd.space.config import OfSpace, SpaceConfig, SRSpaceConfig, TranslationSpaceConfig, up_factors, width_choices


class Choice(Protocol):
    """One layer's choice (:class:`agd.arch.LayerChoice`): the space checks and costs any object of this shape."""

    name: str
    op: str
    width: int


class Architecture(Protocol):
    """A chosen architecture (:class:`agd.arch.Genotype`) as the space sees it: the space's config and one
    choice per layer. The space validates and costs architectures; building them is :mod:`agd.arch`'s."""

    config: SpaceConfig
    layers: Sequence[Choice]

@dataclass(frozen=True)
class LayerSpec:
    """One layer of a space: its operator and output-width choices. Its input width is the previous
    layer's output width (the first layer's is the image's channel count)."""

    name: str
    ops: tuple[str, ...]
    widths: tuple[int, ...]
    style: Style
    stride: int = 1
    expansion: int = 3

    @property
    def searchable(self) -> bool:
        return len(self.ops) > 1 or len(self.widths) > 1


def build_op(op: str, spec: LayerSpec, c_in: int, c_out: int, *, projection: bool | None = None) -> nn.Module:
    """The module of operator ``op`` for layer ``spec`` at widths (``c_in``, ``c_out``)."""
    s = spec.style
    if op == "conv1x1":
        return ConvNormAct(c_in, c_out, 1, s, stride=spec.stride)
    if op == "conv3x3":
        return ConvNormAct(c_in, c_out, 3, s, stride=spec.stride)
    if op == "conv3x3_d2":
        return ConvNormAct(c_in, c_out, 3, s, stride=spec.stride, dilation=2)
    if op == "conv7x7":
        return ConvNormAct(c_in, c_out, 7, s, stride=spec.stride)
    if op == "deconv3x3":
        return ConvNormAct(c_in, c_out, 3, s, stride=2, transposed=True)
    if op == "resblock":
        return ResBlock(c_in, c_out, s, projection=projection)
    if op == "dwsblock":
        return DwsBlock(c_in, c_out, s, expansion=spec.expansion, projection=projection)
    if op == "identity":
        return Identity()
    raise AgdError(f"layer {spec.name}: unknown operator {op!r}")


def op_valid(op: str, spec: LayerSpec, c_in: int, c_out: int) -> bool:
    """Whether ``op`` may sit in layer ``spec`` between these widths (identity needs equal widths)."""
    return op != "identity" or (c_in == c_out and spec.stride == 1)


class SearchSpace(OfSpace):
    """The layers of a space built from its config, plus cost and counting over its choices."""

    def __init__(self, config: SpaceConfig) -> None:
        self.config = config
        self.layers: list[LayerSpec] = self._build_layers()

    # ------------------------------------------------------------------ structure
    def _build_layers(self) -> list[LayerSpec]:
        c = self.config
        ratios, rt, e = c.width_ratios, c.round_to, c.dws_expansion
        if isinstance(c, TranslationSpaceConfig):
            def w(base: int) -> tuple[int, ...]:
                return width_choices(base, ratios, rt) if c.search_stem_header else (base,)
            body = Style("instance", c.norm_affine, "relu", c.padding, False)
            layers = [
                LayerSpec("stem", ("conv7x7",), w(c.stem_width), body, expansion=e),
                LayerSpec("down1", ("conv3x3",), w(c.down_widths[0]), body, stride=2, expansion=e),
                LayerSpec("down2", ("conv3x3",), w(c.down_widths[1]), body, stride=2, expansion=e),
            ]
            body_widths = width_choices(c.down_widths[1], ratios, rt)
            layers += [LayerSpec(f"layer{i + 1}", c.ops, body_widths, body, expansion=e) for i in range(c.n_layers)]
            layers += [
                LayerSpec("up1", ("deconv3x3",), w(c.up_widths[0]), body, stride=2, expansion=e),
                LayerSpec("up2", ("deconv3x3",), w(c.up_widths[1]), body, stride=2, expansion=e),
                LayerSpec("head", ("conv7x7",), (c.out_ch,), Style("none", False, "tanh", c.padding, True), expansion=e),
            ]
            return layers
        assert isinstance(c, SRSpaceConfig)
        plain = Style("none", False, "none", "zeros", True)
        lrelu = Style("none", False, "lrelu", "zeros", True)
        search = Style("none", False, "lrelu", "zeros", False)
        inner = width_choices(c.nf, ratios, rt)
        layers = [LayerSpec("conv_first", ("conv3x3",), (c.nf,), plain, expansion=e)]
        for ci in range(c.n_cells):
            for li in range(c.layers_per_cell):
                last = li == c.layers_per_cell - 1
                layers.append(LayerSpec(f"cell{ci + 1}.layer{li + 1}", c.ops, (c.nf,) if last else inner, search,
                                        expansion=e))
        layers.append(LayerSpec("conv_body", ("conv3x3",), (c.nf,), plain, expansion=e))
        tail = inner if c.search_tail else (c.nf,)
        up_ops = ("conv3x3", "conv1x1") if c.search_tail else ("conv3x3",)
        layers += [LayerSpec(f"conv_up{i + 1}", up_ops, tail, lrelu, expansion=e)
                   for i in range(len(up_factors(c.scale)))]
        layers.append(LayerSpec("conv_hr", up_ops + ("identity",) if c.search_tail else up_ops, tail, lrelu,
                                expansion=e))
        layers.append(LayerSpec("conv_last", ("conv3x3",), (c.out_ch,), plain, expansion=e))
        return layers

    def in_choices(self, i: int) -> tuple[int, ...]:
        """Possible input widths of layer ``i``."""
        return (self.config.in_ch,) if i == 0 else self.layers[i - 1].widths

    def input_sizes(self, hw: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Spatial size at the input of every layer for an input of ``hw`` (the reference size by default)."""
        h, w = hw or self.config.reference_size
        sizes = []
        if self.kind == "translation":
            for spec in self.layers:
                sizes.append((h, w))
                if spec.ops == ("deconv3x3",):
                    h, w = h * 2, w * 2
                elif spec.stride == 2:
                    h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
            return sizes
        factors = iter(up_factors(self.config.scale))
        f = 1
        for spec in self.layers:
            if spec.name.startswith("conv_up"):  # runs after its round's nearest upsampling
                f *= next(factors)
            sizes.append((h * f, w * f))
        return sizes

    # ------------------------------------------------------------------ cost
    @cached_property
    def _meta_ops(self) -> dict[tuple[int, str], nn.Module]:
        with torch.device("meta"):
            return {(i, op): build_op(op, spec, max(self.in_choices(i)), max(spec.widths), projection=True)
                    for i, spec in enumerate(self.layers) for op in spec.ops}

    def op_macs(self, i: int, op: str, c_in: int, c_out: int, hw: tuple[int, int]) -> int:
        """MACs of operator ``op`` in layer ``i`` at these widths, input size ``hw``."""
        return self._meta_ops[(i, op)].macs(c_in, c_out, *hw)

    def cost_tables(self, cost: Callable[[int, LayerSpec, str, int, int, tuple[int, int]], float],
                    hw: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Per layer, a float64 tensor (ops, input-width choices, output-width choices) of
        ``cost(layer index, spec, op, c_in, c_out, input size)``; invalid combinations (identity between
        unequal widths) hold NaN. The shape every expected-cost computation takes."""
        tables = []
        for i, (spec, size) in enumerate(zip(self.layers, self.input_sizes(hw))):
            ins = self.in_choices(i)
            t = torch.full((len(spec.ops), len(ins), len(spec.widths)), math.nan, dtype=torch.float64)
            for k, op in enumerate(spec.ops):
                for a, ci in enumerate(ins):
                    for b, co in enumerate(spec.widths):
                        if op_valid(op, spec, ci, co):
                            t[k, a, b] = cost(i, spec, op, ci, co, size)
            tables.append(t)
        return tables

    def macs_tables(self, hw: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Per layer, MACs (see :meth:`cost_tables`)."""
        return self.cost_tables(lambda i, _spec, op, ci, co, size: self.op_macs(i, op, ci, co, size), hw)

    def genotype_macs(self, g: Architecture, hw: tuple[int, int] | None = None) -> int:
        self.validate(g)
        total, c_in = 0, self.config.in_ch
        for i, (choice, size) in enumerate(zip(g.layers, self.input_sizes(hw))):
            total += self.op_macs(i, choice.op, c_in, choice.width, size)
            c_in = choice.width
        return total

    def num_architectures(self) -> int:
        """Distinct architectures: operator and width sequences, identity only between equal widths."""
        ways = {self.config.in_ch: 1}
        for i, spec in enumerate(self.layers):
            nxt: dict[int, int] = {}
            for ci, n in ways.items():
                for co in spec.widths:
                    k = sum(op_valid(op, spec, ci, co) for op in spec.ops)
                    if k:
                        nxt[co] = nxt.get(co, 0) + n * k
            ways = nxt
        return sum(ways.values())

    # ------------------------------------------------------------------ genotypes
    def validate(self, g: Architecture) -> None:
        """Raise AgdError naming the first layer at fault and its allowed values."""
        if g.config != self.config:
            raise AgdError("genotype: it belongs to another space (its space config differs)")
        if len(g.layers) != len(self.layers):
            raise AgdError(f"genotype: {len(g.layers)} layers, the {self.kind} space has {len(self.layers)} "
                           f"({', '.join(s.name for s in self.layers)})")
        c_in = self.config.in_ch
        for spec, ch in zip(self.layers, g.layers):
            if ch.name != spec.name:
                raise AgdError(f"genotype: layer {ch.name!r} found where {spec.name!r} is expected")
            if ch.op not in spec.ops:
                raise AgdError(f"genotype: layer {spec.name}: operator {ch.op!r} is not one of {', '.join(spec.ops)}")
            if ch.width not in spec.widths:
                raise AgdError(f"genotype: layer {spec.name}: width {ch.width} is not one of "
                               f"{', '.join(map(str, spec.widths))}")
            if not op_valid(ch.op, spec, c_in, ch.width):
                raise AgdError(f"genotype: layer {spec.name}: identity needs equal widths, got {c_in} -> {ch.width}")
            c_in = ch.width

