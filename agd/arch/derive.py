"""Derive a standalone generator from a genotype: standard torch modules only, no supernet."""

from __future__ import annotations

from torch import nn

from agd.arch.genotype import Genotype
from agd.space.elastic import slice_into
from agd.space.networks import build_network, init_residual_head
from agd.space.space import SearchSpace, build_op


def derive(g: Genotype, supernet: "nn.Module | None" = None) -> nn.Module:
    """Build the generator a genotype describes, with fresh weights or, given the ``supernet`` it was
    searched in, with the supernet's weights sliced to the chosen operators and widths.

    The result holds only ordinary convolutions, norms and activations (each a torch base class, see
    :mod:`agd.space.elastic`), so torch.export, ONNX and TVM take it as is."""
    space = SearchSpace(g.config)
    space.validate(g)
    layers, c_in = [], g.config.in_ch
    for i, (spec, ch) in enumerate(zip(space.layers, g.layers)):
        m = build_op(ch.op, spec, c_in, ch.width)
        if supernet is not None:
            slice_into(m, supernet.mixed_layers[i].candidates[ch.op])
        layers.append(m)
        c_in = ch.width
    if supernet is None:
        init_residual_head(space, layers[-1])
    net = build_network(space, layers)
    if supernet is not None and g.config.input_skip == "colour":  # the learned skip, shared like the layers
        net.skip.load_state_dict(supernet.net.skip.state_dict())
    return net
