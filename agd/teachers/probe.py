"""What a generator agd has never seen does, found by running it: :func:`probe_generator`.

One forward on a small RGB image in the teacher's value range tells the task (same size out:
translation; k x k the size: SR x k) and whether it is finite there. Further small forwards find the size
multiple its inputs need (a network with stride-2 stages returns another size, or fails, on sizes that
are not a multiple of 2 ** stages); agd then pads inputs to it, as for CycleGAN. All errors name the
teacher and the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agd.io import AgdError

PROBE_SIZES = (64, 256)  # the first size the network runs at is the probe; 256 is for deep U-Nets
MULTIPLES = (2, 4, 8, 16, 32, 64)
_WHOLE_IMAGE_NORMS = ("instance_norm", "group_norm")


@dataclass(frozen=True)
class Probe:
    task: str
    scale: int
    multiple: int
    shapes: str  # "1x3x64x64 -> 1x3x256x256", for messages


def _shape(t) -> str:
    return "x".join(map(str, t.shape)) if torch.is_tensor(t) else type(t).__name__


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def _run(module: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return module(x)


def _input(h: int, w: int, value_range: tuple[float, float], device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lo, hi = value_range
    return (torch.rand(1, 3, h, w, generator=g) * (hi - lo) + lo).to(device)


def _fits(module: nn.Module, size: int, scale: int, value_range, device) -> bool:
    try:
        y = _run(module, _input(size, size, value_range, device))
    except Exception:
        return False
    return torch.is_tensor(y) and tuple(y.shape[-2:]) == (size * scale, size * scale)


def probe_generator(module: nn.Module, what: str, value_range: tuple[float, float], device="cpu") -> Probe:
    """Task, scale and size multiple of ``module`` (RGB in and out, images in ``value_range``)."""
    errors = []
    for size in PROBE_SIZES:
        x = _input(size, size, value_range, device)
        try:
            y = _run(module, x)
        except Exception as e:
            errors.append(f"1x3x{size}x{size}: {_first_line(e)}")
            continue
        break
    else:
        raise AgdError(f"teacher {what}: cannot run on a probe input ({'; '.join(errors)})")
    shapes = f"{_shape(x)} -> {_shape(y)}"
    if not torch.is_tensor(y) or y.ndim != 4 or y.shape[0] != 1 or y.shape[1] != 3:
        raise AgdError(f"teacher {what}: maps a {_shape(x)} image to {_shape(y)}; agd needs an (N, 3, H, W) "
                       "RGB image out")
    if not bool(torch.isfinite(y).all()):
        raise AgdError(f"teacher {what}: produces NaN or inf on a {_shape(x)} probe input in "
                       f"[{value_range[0]:g}, {value_range[1]:g}]")
    oh, ow = y.shape[-2:]
    if (oh, ow) == (size, size):
        task, scale = "translation", 1
    elif oh == ow and oh % size == 0:
        task, scale = "sr", oh // size
    else:
        raise AgdError(f"teacher {what}: maps {shapes}, neither the same size (translation) nor k x k the size "
                       "(super-resolution x k)")
    multiple = int(getattr(module, "size_multiple", 0) or 0)
    if multiple < 1:
        multiple = next((m for m in (1,) + MULTIPLES if _fits(module, size + (m if m > 1 else 3), scale,
                                                              value_range, device)), size)
    return Probe(task, scale, multiple, shapes)


def normalises_whole_image(module: nn.Module) -> bool:
    """True when the network normalises over the whole image (InstanceNorm, GroupNorm), as modules or, in a
    ``torch.export`` graph module, as ops: tiles would see other statistics, so it runs in one pass."""
    if any(isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm))
           for m in module.modules()):
        return True
    graph = getattr(module, "graph", None)
    if graph is None:
        return False
    return any(any(k in str(n.target) for k in _WHOLE_IMAGE_NORMS) for n in graph.nodes if n.op == "call_function")
