"""The distillation loss terms as plain functions of tensors (each has a float64 test against a hand loop).

- :func:`pixel_l1`: mean absolute difference over all elements (``nn.L1Loss`` with mean reduction).
- :func:`content_distance`: mean absolute (``l1``) or mean squared (``mse``) difference of two feature maps.
- :func:`gram_matrix`: ``G[n, i, j] = sum_p F[n, i, p] F[n, j, p] / (C * H * W)`` for features (N, C, H, W),
  the normalisation of Johnson et al. 2016 ("Perceptual losses", eq. for G^phi_j) and of AGD's code.
- :func:`style_distance`: mean squared difference of the two Gram matrices over (N, C, C); Johnson et al.
  use the squared Frobenius norm (a sum over C x C, per image); the mean is what AGD's code computes
  (``F.mse_loss`` on the Grams), and AGD's style weight 1e5 is calibrated for it.
- :func:`total_variation`: anisotropic L1 total variation, ``mean |x[..., :, 1:] - x[..., :, :-1]| +
  mean |x[..., 1:, :] - x[..., :-1, :]|``. AGD's code sums the absolute differences instead (so its weight
  depends on the batch and crop size); the mean keeps one weight valid for any size. AGD's presets use
  weight 0, so the choice does not change them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")


def pixel_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference."""
    _same_shape(a, b, "pixel L1")
    return (a - b).abs().mean()


def content_distance(a: Tensor, b: Tensor, criterion: str = "l1") -> Tensor:
    """Mean absolute (``l1``) or mean squared (``mse``) difference of two feature maps."""
    _same_shape(a, b, "content loss")
    d = a - b
    if criterion == "l1":
        return d.abs().mean()
    if criterion == "mse":
        return d.square().mean()
    raise ValueError(f"content criterion {criterion!r}: expected l1 or mse")


def gram_matrix(f: Tensor) -> Tensor:
    """(N, C, H, W) features -> (N, C, C) Gram matrices normalised by C * H * W."""
    if f.dim() != 4:
        raise ValueError(f"gram_matrix: expected (N, C, H, W) features, got shape {tuple(f.shape)}")
    n, c, h, w = f.shape
    x = f.reshape(n, c, h * w)
    return torch.bmm(x, x.transpose(1, 2)) / (c * h * w)


def style_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference of the Gram matrices of two feature maps (same C; H, W may differ)."""
    ga, gb = gram_matrix(a), gram_matrix(b)
    _same_shape(ga, gb, "style loss (Gram matrices)")
    return (ga - gb).square().mean()


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic L1 total variation: mean horizontal plus mean vertical absolute neighbour difference."""
    if x.dim() < 2 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"total_variation: needs at least 2x2 images, got shape {tuple(x.shape)}")
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy
