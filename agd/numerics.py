"""Numerical settings for reference outputs."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def exact_float32():
    """Plain float32 convolutions and matmuls on CUDA inside the block (TF32 off, restored after): cuDNN's
    default TF32 rounds inputs to 10 mantissa bits and errs ~1e-3, too coarse for a reference output."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
