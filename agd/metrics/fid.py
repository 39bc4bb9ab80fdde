"""Fréchet Inception Distance, computed in float64.

Conventions:
- features are (N, D) rows, one per image; statistics are the float64 mean (D,) and the unbiased
  covariance (D, D) (divided by N - 1, as ``numpy.cov`` and pytorch-fid), returned as numpy arrays so
  they can be stored next to pytorch-fid's ``mu``/``sigma`` statistics;
- FID = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)), see :func:`frechet_distance` for how
  the trace of the matrix square root is computed (symmetric eigen-decompositions, not sqrtm);
  :func:`fid_from_features` keeps a set with fewer samples than dimensions in factored form and
  needs only an N x N eigen-decomposition (same value, much faster for small sets);
- images for :func:`compute_fid` are float tensors in [0, 1] (uint8 tensors are divided by 255), RGB,
  (3, H, W) or (N, 3, H, W); a folder is read with :func:`agd.data.images.read_image`;
- with N samples the covariance has rank at most N - 1: with fewer samples than the feature
  dimension (2048 for Inception pool3) it is rank-deficient. FID is then still defined and computed
  exactly, but it is strongly biased upwards and not comparable with FIDs over other sample counts;
  :func:`feature_stats` warns (:class:`FIDSampleWarning`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agd.data.images import list_images, read_image
from agd.io import AgdError

ArrayLike = Tensor | np.ndarray
ImageSource = str | os.PathLike | Tensor | Iterable[Tensor]

#: rows per float64 block when accumulating a covariance (bounds the float64 copy of the features)
_STATS_CHUNK = 4096


class FIDSampleWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance is rank-deficient and FID is biased."""


def _cpu_tensor(x: ArrayLike) -> Tensor:
    return x.detach().to("cpu") if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def _as_float64(x: ArrayLike, name: str) -> Tensor:
    t = _cpu_tensor(x).to(torch.float64)
    if not torch.isfinite(t).all():
        raise AgdError(f"{name}: contains NaN or infinite values")
    return t


def _check_samples(n: int, d: int) -> None:
    if n < 2:
        raise AgdError(f"features: FID needs at least 2 samples per set to estimate a covariance, got {n}")
    if n < d:
        warnings.warn(
            f"FID from {n} samples of {d}-d features: the covariance has rank <= {n - 1} < {d}; the score "
            f"is biased upwards and only comparable with FIDs over the same number of samples",
            FIDSampleWarning,
            stacklevel=3,
        )


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of (N, D) features, in float64: mean (D,) and unbiased covariance (D, D).

    Computed in two passes over float64 blocks (mean first, then the centred cross-products), so the
    result does not suffer the cancellation of E[x x^T] - mu mu^T. Raises AgdError for fewer than 2
    samples; warns with :class:`FIDSampleWarning` when N < D (rank-deficient covariance)."""
    feats = _cpu_tensor(features)
    if feats.dim() != 2:
        raise AgdError(f"features: expected shape (N, D), got {tuple(feats.shape)}")
    n, d = feats.shape
    _check_samples(n, d)
    total = torch.zeros(d, dtype=torch.float64)
    for i in range(0, n, _STATS_CHUNK):
        total += _as_float64(feats[i : i + _STATS_CHUNK], "features").sum(0)
    mu = total / n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, _STATS_CHUNK):
        block = feats[i : i + _STATS_CHUNK].to(torch.float64) - mu
        cov += block.T @ block
    cov /= n - 1
    return mu.numpy(), cov.numpy()


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix; eigenvalues below the numerical-rank
    tolerance (D * eps * max eigenvalue) count as 0."""
    w, v = torch.linalg.eigh(s)
    w = torch.where(w > _rank_tol(w), w, torch.zeros_like(w))
    return (v * w.sqrt()) @ v.T


def _rank_tol(w: Tensor) -> Tensor:
    return w.numel() * torch.finfo(w.dtype).eps * w.abs().max()


def _trace_sqrt_product(s1: Tensor, s2: Tensor) -> float:
    """Tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)) for PSD S1, S2."""
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    ev = torch.linalg.eigvalsh(0.5 * (m + m.T))
    ev = torch.where(ev > _rank_tol(ev), ev, torch.zeros_like(ev))
    return float(ev.sqrt().sum())


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Method: the trace of the matrix square root of S1 S2 (whose eigenvalues are those of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2)) is the sum of the square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2), with S1^(1/2) from a symmetric eigen-decomposition (``torch.linalg.eigh``)
    and the eigenvalues from ``eigvalsh``, both in float64 on the CPU. Rank-deficient (N < D)
    covariances are handled by treating eigenvalues below the numerical-rank tolerance
    D * eps_float64 * max|eigenvalue| as exactly 0 (round-off would otherwise add sqrt(1e-16)-sized
    terms). Should an eigen-decomposition fail to converge (near-singular, badly conditioned
    input), ``eps`` * I is added to both covariances and the computation is repeated, with a
    warning, as pytorch-fid does when ``scipy.linalg.sqrtm`` fails. Inputs are symmetrised; a
    result that round-off makes negative (identical statistics) is returned as 0.0.
    """
    m1, m2 = _as_float64(mu1, "mu1").reshape(-1), _as_float64(mu2, "mu2").reshape(-1)
    s1, s2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    d = m1.numel()
    if m2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise AgdError(
            f"FID statistics do not match: mu1 {tuple(m1.shape)}, sigma1 {tuple(s1.shape)}, "
            f"mu2 {tuple(m2.shape)}, sigma2 {tuple(s2.shape)}"
        )
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    try:
        tr_covmean = _trace_sqrt_product(s1, s2)
    except torch.linalg.LinAlgError:
        warnings.warn(
            f"FID: eigen-decomposition did not converge; adding {eps:g} to the covariance diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = eps * torch.eye(d, dtype=torch.float64)
        tr_covmean = _trace_sqrt_product(s1 + offset, s2 + offset)
    diff = m1 - m2
    fid = float(diff @ diff) + float(torch.trace(s1)) + float(torch.trace(s2)) - 2.0 * tr_covmean
    return max(fid, 0.0)


def _centred_factor(features: Tensor) -> tuple[Tensor, Tensor]:
    """(mu, B) with B = (X - mu)^T / sqrt(N - 1), shape (D, N): the covariance is B B^T."""
    x = _as_float64(features, "features")
    mu = x.mean(0)
    return mu, (x - mu).T / (x.shape[0] - 1) ** 0.5


def _frechet_lowrank(mu1: Tensor, s1: Tensor, mu2: Tensor, b2: Tensor) -> float:
    """FID with the second covariance given as S2 = B2 B2^T, B2 of shape (D, N2), N2 < D.

    The non-zero eigenvalues of S1 S2 = S1 B2 B2^T are those of the small PSD matrix B2^T S1 B2
    (N2 x N2), so Tr((S1 S2)^(1/2)) = sum of sqrt(eigvalsh(B2^T S1 B2)); exact, and no D x D
    eigen-decomposition is needed."""
    m = b2.T @ s1 @ b2
    ev = torch.linalg.eigvalsh(0.5 * (m + m.T))
    ev = torch.where(ev > _rank_tol(ev), ev, torch.zeros_like(ev))
    diff = mu1 - mu2
    fid = float(diff @ diff) + float(torch.trace(s1)) + float((b2 * b2).sum()) - 2.0 * float(ev.sqrt().sum())
    return max(fid, 0.0)


def fid_from_features(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """FID between two (N, D) feature sets (N may differ between the sets; D must not), in float64.

    When both sets have at least D samples this is ``frechet_distance(*feature_stats(a),
    *feature_stats(b))``. When the smaller set has N < D samples its covariance is kept in factored
    form S = B B^T and the trace term comes from the N x N matrix B^T S_other B (see
    :func:`_frechet_lowrank`): the same value (to round-off) without a D x D eigen-decomposition,
    which matters for the small evaluation sets (tens of images) this project uses."""
    fa, fb = _cpu_tensor(features_a), _cpu_tensor(features_b)
    if fa.dim() != 2 or fb.dim() != 2 or fa.shape[1] != fb.shape[1]:
        shapes = f"{tuple(fa.shape)} and {tuple(fb.shape)}"
        raise AgdError(f"features: expected two (N, D) sets with the same D, got {shapes}")
    small, large = (fa, fb) if fa.shape[0] <= fb.shape[0] else (fb, fa)
    mu_l, s_l = feature_stats(large)
    if small.shape[0] >= small.shape[1]:
        mu_s, s_s = feature_stats(small)
        return frechet_distance(mu_l, s_l, mu_s, s_s)
    _check_samples(*small.shape)
    mu_s, b_s = _centred_factor(small)
    return _frechet_lowrank(torch.from_numpy(mu_l), torch.from_numpy(s_l), mu_s, b_s)


def _iter_images(source: ImageSource, name: str) -> Iterator[Tensor]:
    """Yield (3, H, W) or (B, 3, H, W) tensors from a folder, one tensor or an iterable of tensors."""
    if isinstance(source, (str, os.PathLike)):

        folder = Path(source)
        if not folder.is_dir():
            raise AgdError(f"{name} {folder}: not a folder of images")
        for p in list_images(folder):  # AgdError when the folder holds no image
            yield read_image(p)
    elif isinstance(source, Tensor):
        yield source
    else:
        yield from source


def _batches(
    source: ImageSource, name: str, batch_size: int, input_size: tuple[int, int] | None = None
) -> Iterator[Tensor]:
    """Stack images into (B, 3, H, W) float batches of at most ``batch_size``. With ``input_size``
    every image is first resized to it (bilinear, align_corners=False); otherwise a change of image
    size starts a new batch (every image then goes through the model at its own size)."""
    pending: list[Tensor] = []
    count = 0

    def flush() -> Tensor:
        batch = torch.cat(pending, 0)
        pending.clear()
        return batch

    for img in _iter_images(source, name):
        if not isinstance(img, Tensor):
            raise AgdError(f"{name}: expected image tensors, got {type(img).__name__}")
        if img.dim() == 3:
            img = img.unsqueeze(0)
        if img.dim() != 4 or img.shape[1] not in (1, 3):
            raise AgdError(f"{name}: expected images of shape (3, H, W) or (N, 3, H, W), got {tuple(img.shape)}")
        if img.dtype == torch.uint8:
            img = img.float() / 255.0
        elif not img.is_floating_point():
            raise AgdError(f"{name}: expected float images in [0, 1] or uint8, got {img.dtype}")
        if img.shape[1] == 1:
            img = img.expand(-1, 3, -1, -1)
        if input_size is not None and tuple(img.shape[2:]) != tuple(input_size):
            img = F.interpolate(img.float(), size=input_size, mode="bilinear", align_corners=False)
        for part in img.split(batch_size):
            if pending and (part.shape[1:] != pending[0].shape[1:] or count + part.shape[0] > batch_size):
                yield flush()
                count = 0
            pending.append(part)
            count += part.shape[0]
            if count == batch_size:
                yield flush()
                count = 0
    if pending:
        yield flush()


@torch.inference_mode()
def extract_features(
    images: ImageSource,
    model: nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    name: str = "images",
) -> Tensor:
    """Run ``model`` (already on ``device``; e.g. :func:`agd.metrics.inception.load_inception`) over
    images in [0, 1] and return the (N, D) float32 features on the CPU.

    The model runs in eval mode (its previous mode is restored afterwards). Images outside [0, 1]
    (beyond a 1e-3 slack) raise AgdError: a generator's [-1, 1] output must be mapped first.
    A model with an ``input_size`` attribute (H, W) that resizes its input to that size bilinearly
    itself (:class:`~agd.metrics.inception.InceptionV3FID`) gets every image resized here, so that
    images of mixed sizes share batches; the result is the same, as resizing to the same size is
    the identity. Other models see each image at its own size, batched with same-size neighbours."""
    if batch_size < 1:
        raise AgdError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    feats: list[Tensor] = []
    try:
        for batch in _batches(images, name, batch_size, getattr(model, "input_size", None)):
            lo, hi = float(batch.min()), float(batch.max())
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise AgdError(f"{name}: pixel values span [{lo:.3g}, {hi:.3g}]; FID expects images in [0, 1]")
            out = model(batch.to(device=device, dtype=torch.float32))
            feats.append(out.reshape(out.shape[0], -1).float().cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise AgdError(f"{name}: no images")
    return torch.cat(feats, 0)


def compute_fid(
    images_a: ImageSource,
    images_b: ImageSource,
    model: nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> float:
    """FID between two image sets, each a folder, a (N, 3, H, W) tensor or an iterable of (3, H, W) /
    (B, 3, H, W) tensors in [0, 1]. ``model`` maps such batches to (B, D) features (normally the FID
    Inception from :func:`agd.metrics.inception.load_inception`, already on ``device``)."""
    fa = extract_features(images_a, model, batch_size, device, name="images_a")
    fb = extract_features(images_b, model, batch_size, device, name="images_b")
    return fid_from_features(fa, fb)
