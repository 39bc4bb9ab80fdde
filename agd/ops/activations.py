"""The activations agd's blocks end in: one table of names and codes, one PyTorch forward and derivative.

Every place that handles an activation reads this module: the block ops and their references
(:mod:`agd.ops.blocks`, :mod:`agd.ops.fused`), the mixed-layer epilogue and its Triton kernel
(:mod:`agd.ops.mixed`, ``kernels/mixed_epilogue.py`` takes the codes of :data:`EPILOGUE_ACTS`), the C++ and
CUDA kernels (csrc/, the codes of :data:`ACT_CODES`), the fast converter (:mod:`agd.arch.fast`, oneDNN's
names) and the supernet (which block outputs the fused epilogue can finish).

Conventions: "lrelu" has a negative slope (0.2 unless a module says otherwise); the derivative at 0 is
torch's (0 for ReLU, the slope for LeakyReLU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_SLOPE = 0.2


@dataclass(frozen=True)
class Activation:
    """One activation: its name, the kernels' integer code, its torch module, oneDNN's name for it
    (``mkldnn::_convolution_pointwise``), and whether the fused mixed-layer epilogue takes it."""

    name: str
    code: int
    module: type[nn.Module]
    onednn: str
    epilogue: bool


ACTIVATIONS = (
    Activation("none", 0, nn.Identity, "none", True),
    Activation("relu", 1, nn.ReLU, "relu", True),
    Activation("lrelu", 2, nn.LeakyReLU, "leaky_relu", True),
    Activation("tanh", 3, nn.Tanh, "tanh", False),
)
ACT_CODES = {a.name: a.code for a in ACTIVATIONS}  # the block ops' codes (csrc/ and agd.ops)
EPILOGUE_ACTS = {a.name: a.code for a in ACTIVATIONS if a.epilogue}  # the mixed epilogue's subset
ONEDNN_ACTS = {a.name: a.onednn for a in ACTIVATIONS}
_NONE, _RELU, _LRELU, _TANH = (ACT_CODES[n] for n in ("none", "relu", "lrelu", "tanh"))


def act_code(name: str, what: str) -> int:
    """The code of activation ``name``; a ValueError naming ``what`` (the op) when it is not one of ours."""
    if name not in ACT_CODES:
        raise ValueError(f"{what}: activation {name!r} is not one of {', '.join(ACT_CODES)}")
    return ACT_CODES[name]


def act_forward(y: torch.Tensor, code: int, slope: float = DEFAULT_SLOPE, *, inplace: bool = False) -> torch.Tensor:
    """The reference forward of activation ``code`` (in place on ``y`` when ``inplace``)."""
    if code == _RELU:
        return y.relu_() if inplace else torch.relu(y)
    if code == _LRELU:
        return F.leaky_relu_(y, slope) if inplace else F.leaky_relu(y, slope)
    if code == _TANH:
        return y.tanh_() if inplace else torch.tanh(y)
    if code == _NONE:
        return y
    raise ValueError(f"activation code {code} is not one of {ACT_CODES}")


def act_grad(t: torch.Tensor, code: int, slope: float = DEFAULT_SLOPE, *, of_output: bool = False) -> torch.Tensor:
    """d act / du in ``t``'s dtype, from the activation's input ``t = u`` or, ``of_output``, from its output
    ``t = act(u)`` (what a backward that saved the output has; the same values for slope >= 0)."""
    if code == _RELU:
        return (t > 0).to(t.dtype)
    if code == _LRELU:
        return torch.where(t > 0, torch.ones_like(t), torch.full_like(t, slope))
    if code == _TANH:
        out = t if of_output else torch.tanh(t)
        return 1 - out * out
    if code == _NONE:
        return torch.ones_like(t)
    raise ValueError(f"activation code {code} is not one of {ACT_CODES}")


def act_of(m: nn.Module) -> tuple[str, float] | None:
    """(activation name, negative slope) of an activation module, None when it is not one of ours."""
    for a in ACTIVATIONS:
        if isinstance(m, a.module):
            return a.name, float(m.negative_slope) if isinstance(m, nn.LeakyReLU) else DEFAULT_SLOPE
    return None
