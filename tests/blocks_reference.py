"""Plain-PyTorch references and inputs shared by the block-op tests (tests/test_csrc_blocks.py on the CPU,
tests/test_csrc_cuda.py on a GPU): written with torch's own ops, independent of agd.ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def epilogue_reference(y, s, w, b, norm, act, slope=0.2, eps=1e-5):
    """act(IN(y) * w + b + s) with F.instance_norm; act codes 0 none, 1 relu, 2 leaky relu, 3 tanh."""
    def per_channel(t, neutral):
        return neutral if t is None else t.reshape(1, -1, 1, 1)

    z = (F.instance_norm(y, eps=eps) if norm else y) * per_channel(w, 1.0) + per_channel(b, 0.0)
    z = z if s is None else z + s
    return {0: lambda t: t, 1: torch.relu, 2: lambda t: F.leaky_relu(t, slope), 3: torch.tanh}[act](z)


def dws_args(cin, cout, hid, seed, affine):
    """(w_expand, w_dw, w_project, w_shortcut or None, affine list) of a DwsBlock, seeded."""
    g = gen(seed)
    we = torch.randn(hid, cin, 1, 1, generator=g) / cin**0.5
    wd = torch.randn(hid, 1, 3, 3, generator=g) / 3
    wp = torch.randn(cout, hid, 1, 1, generator=g) / hid**0.5
    ws = torch.randn(cout, cin, 1, 1, generator=g) / cin**0.5 if cin != cout else None
    aff = []
    if affine:
        for c in (hid, hid, cout, cout):
            aff += [1 + 0.3 * torch.randn(c, generator=g), 0.3 * torch.randn(c, generator=g)]
    return we, wd, wp, ws, aff
