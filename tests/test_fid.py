"""FID: float64 Fréchet distance against independent references, the pytorch-fid-compatible
InceptionV3 (layout facts, loading, errors) and compute_fid end to end."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from agd.io import AgdError, save_checkpoint, sha256_file
from agd.metrics import fid as fid_mod
from agd.metrics import inception as inc
from agd.metrics.fid import (
    FIDSampleWarning,
    compute_fid,
    extract_features,
    feature_stats,
    fid_from_features,
    frechet_distance,
)
from agd.metrics.inception import FID_WEIGHTS_NAME, InceptionV3FID, load_inception

# ---------------------------------------------------------------- references


def _scipy_fid(mu1, s1, mu2, s2) -> float:
    """Textbook FID with scipy.linalg.sqrtm of S1 S2 (float64)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _nuclear_fid(x: np.ndarray, y: np.ndarray) -> float:
    """Exact FID of two feature sets: with S1 = A A^T, S2 = B B^T (A, B centred features scaled by
    1/sqrt(n-1)), Tr((S1 S2)^(1/2)) is the nuclear norm of A^T B (sum of its singular values)."""
    a = (x - x.mean(0)).T / np.sqrt(len(x) - 1)
    b = (y - y.mean(0)).T / np.sqrt(len(y) - 1)
    nuc = np.linalg.svd(a.T @ b, compute_uv=False).sum()
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * nuc)


def _features(rng: np.random.Generator, n: int, d: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mix) * scale + shift + rng.standard_normal(d) * 0.1


# ---------------------------------------------------------------- Fréchet distance

CASES = [(3, 50), (17, 9), (64, 20), (129, 200), (200, 61)]  # (D, N): N < D is rank-deficient


@pytest.mark.parametrize("d,n", CASES)
def test_frechet_matches_scipy_sqrtm_and_exact(d, n):
    rng = np.random.default_rng(d * 1000 + n)
    x = _features(rng, n, d)
    y = _features(rng, n + 7, d, scale=1.3, shift=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleWarning)
        mu1, s1 = feature_stats(x)
        mu2, s2 = feature_stats(y)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _scipy_fid(mu1, s1, mu2, s2)
    exact = _nuclear_fid(x, y)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ours == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("d,n", CASES)
def test_frechet_zero_for_identical_stats(d, n):
    rng = np.random.default_rng(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleWarning)
        mu, s = feature_stats(_features(rng, n, d))
    val = frechet_distance(mu, s, mu, s)
    assert 0.0 <= val <= 1e-10 * np.trace(s)


@pytest.mark.parametrize("d,n", CASES)
def test_frechet_symmetric(d, n):
    rng = np.random.default_rng(7 + d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleWarning)
        mu1, s1 = feature_stats(_features(rng, n, d))
        mu2, s2 = feature_stats(_features(rng, n + 3, d, scale=0.7))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(3)
    d = 23
    a, b = rng.uniform(0.0, 2.0, d), rng.uniform(0.0, 3.0, d)
    a[[2, 5]] = 0.0  # singular
    b[[5, 11]] = 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    # 1-d Gaussians: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.5], [[4.0]], [-0.5], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-14)


def test_frechet_accepts_tensors_and_rejects_bad_input():
    s = np.eye(4) * 2.0
    assert frechet_distance(torch.zeros(4), torch.tensor(s, dtype=torch.float32), np.ones(4), s) == pytest.approx(4.0)
    with pytest.raises(AgdError, match="do not match"):
        frechet_distance(np.zeros(4), s, np.zeros(5), np.eye(5))
    bad = s.copy()
    bad[0, 1] = np.nan
    with pytest.raises(AgdError, match="NaN"):
        frechet_distance(np.zeros(4), bad, np.zeros(4), s)


def test_frechet_eps_retry_when_eigh_fails(monkeypatch):
    calls = []
    real = fid_mod._trace_sqrt_product

    def flaky(s1, s2):
        calls.append(float(s1[0, 0]))
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("did not converge")
        return real(s1, s2)

    monkeypatch.setattr(fid_mod, "_trace_sqrt_product", flaky)
    s = np.diag([1.0, 0.0, 4.0])
    with pytest.warns(RuntimeWarning, match="did not converge"):
        val = frechet_distance(np.zeros(3), s, np.zeros(3), s, eps=1e-6)
    assert calls == [1.0, 1.0 + 1e-6]
    assert val == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------- feature statistics


def test_feature_stats_matches_numpy_float64(monkeypatch):
    monkeypatch.setattr(fid_mod, "_STATS_CHUNK", 8)  # several blocks for 37 rows
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((37, 5)) * 3.0 + 100.0).astype(np.float32)  # large mean: no cancellation
    for src in (x, torch.from_numpy(x)):
        mu, s = feature_stats(src)
        assert mu.dtype == np.float64 and s.dtype == np.float64
        np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-14)
        np.testing.assert_allclose(s, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12, atol=1e-12)


def test_feature_stats_sample_count_checks():
    with pytest.raises(AgdError, match="at least 2 samples"):
        feature_stats(np.ones((1, 4)))
    with pytest.raises(AgdError, match=r"shape \(N, D\)"):
        feature_stats(np.ones(4))
    with pytest.warns(FIDSampleWarning, match="rank <= 4"):
        feature_stats(np.random.default_rng(0).standard_normal((5, 9)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_stats(np.random.default_rng(0).standard_normal((9, 9)))


@pytest.mark.parametrize("n,d", [(41, 11), (9, 31)])  # stats route, factored low-rank route
def test_fid_from_features_of_a_shifted_set_is_the_squared_shift(n, d):
    rng = np.random.default_rng(5)
    x = _features(rng, n, d)
    c = rng.standard_normal(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleWarning)
        assert fid_from_features(x, x + c) == pytest.approx(float(c @ c), rel=1e-9)
        assert 0.0 <= fid_from_features(x, x) <= 1e-10 * float(x.var(0).sum())


@pytest.mark.parametrize("d,n", CASES + [(40, 300)])
def test_fid_from_features_routes_agree_with_exact(d, n):
    """Small sets go through the factored N x N route, large ones through frechet_distance: both
    equal the exact nuclear-norm value, whichever set is the smaller."""
    rng = np.random.default_rng(11 * d + n)
    x = _features(rng, n, d)
    y = _features(rng, n + 5, d, scale=0.8, shift=-0.1)
    exact = _nuclear_fid(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleWarning)
        assert fid_from_features(x, y) == pytest.approx(exact, rel=1e-10)
        assert fid_from_features(torch.from_numpy(y).float(), x) == pytest.approx(
            _nuclear_fid(y.astype(np.float32).astype(np.float64), x), rel=1e-10
        )
    if n < d:
        with pytest.warns(FIDSampleWarning):
            fid_from_features(x, y)
    with pytest.raises(AgdError, match="same D"):
        fid_from_features(x, y[:, :-1])


# ---------------------------------------------------------------- Inception layout

# Facts counted from pytorch-fid's FID Inception (torchvision inception_v3 with num_classes=1008,
# aux_logits=False and its FIDInceptionA/C/E blocks): 94 conv+BN units, 566 state-dict entries
# (472 without the num_batches_tracked counters), 23,850,960 parameters, 23,885,392 numbers in the
# weights-file tensors (parameters + BN running mean/var).
EXPECTED_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def inception() -> InceptionV3FID:
    """Random weights; He-initialised convolutions so that features do not vanish with depth."""
    torch.manual_seed(0)
    model = InceptionV3FID().eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def test_inception_state_dict_layout(inception):
    sd = inception.state_dict()
    assert len(sd) == 566
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 94
    assert sum(k.endswith(".conv.weight") for k in sd) == 94
    assert not any("AuxLogits" in k or k.endswith("conv.bias") for k in sd)
    for key, shape in EXPECTED_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert sum(p.numel() for p in inception.parameters()) == 23_850_960
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 23_885_392
    assert all(m.eps == 1e-3 for m in inception.modules() if isinstance(m, nn.BatchNorm2d))
    assert (inception.Mixed_7b.pool, inception.Mixed_7c.pool) == ("avg", "max")


def test_tf_style_pools():
    x = torch.ones(1, 2, 5, 7)
    assert torch.equal(inc._avg3(x), x)  # padding not counted: borders stay 1
    y = -torch.ones(1, 1, 4, 4)
    assert torch.equal(inc._max3(y), y)  # padding never wins the max


def test_inception_forward_shape_and_batch_independence(inception):
    x = torch.rand(2, 3, 67, 91, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = inception(x)
        f1 = inception(x[1:])
    assert f.shape == (2, 2048) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and (f >= 0).all()
    torch.testing.assert_close(f[1:], f1, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        inception(torch.rand(1, 4, 9, 9))


# ---------------------------------------------------------------- loading weights


def test_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.delenv("AGD_FID_WEIGHTS", raising=False)
    for args in ((), (tmp_path / "nope.pth",), (tmp_path,)):
        with pytest.raises(AgdError) as e:
            load_inception(*args)
        msg = str(e.value)
        assert FID_WEIGHTS_NAME in msg and "pytorch-fid" in msg and "AGD_FID_WEIGHTS" in msg
        assert "\n" not in msg
    monkeypatch.setenv("AGD_FID_WEIGHTS", str(tmp_path / "also_missing.pth"))
    with pytest.raises(AgdError, match="also_missing.pth: no such file"):
        load_inception()


def test_weights_with_wrong_hash_are_refused(tmp_path):
    path = tmp_path / FID_WEIGHTS_NAME
    save_checkpoint({"fc.bias": torch.zeros(1008)}, path)
    with pytest.raises(AgdError, match="sha256"):
        load_inception(path)


def test_load_inception_strict_roundtrip(tmp_path, monkeypatch, inception):
    """The loading path with the hash check pointed at a file made here (the real file is absent)."""
    sd = {k: v for k, v in inception.state_dict().items() if not k.endswith("num_batches_tracked")}
    with torch.no_grad():
        sd = {k: (v + 0.01 if k.endswith("running_mean") else v) for k, v in sd.items()}
    path = tmp_path / "sub" / FID_WEIGHTS_NAME
    save_checkpoint(sd, path)
    monkeypatch.setattr(inc, "FID_WEIGHTS_SHA256_PREFIX", sha256_file(path)[:8])
    monkeypatch.setenv("AGD_FID_WEIGHTS", str(path.parent))  # a folder holding the file works too
    model = load_inception(device="cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    loaded = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k

    bad = tmp_path / "bad.pth"
    save_checkpoint({k: v for k, v in sd.items() if k != "Mixed_6c.branch1x1.bn.running_var"}, bad)
    monkeypatch.setattr(inc, "FID_WEIGHTS_SHA256_PREFIX", sha256_file(bad)[:8])
    with pytest.raises(AgdError, match="Mixed_6c.branch1x1.bn.running_var"):
        load_inception(bad)


def test_real_fid_weights_load_strictly():
    path = os.environ.get("AGD_FID_WEIGHTS")
    if not path or not Path(path).exists():
        pytest.skip(f"AGD_FID_WEIGHTS does not point at {FID_WEIGHTS_NAME} (not on this machine)")
    model = load_inception(path)
    sd = model.state_dict()
    var = torch.cat([v for k, v in sd.items() if k.endswith("running_var")])
    assert (var > 0).all() and float(sd["fc.weight"].abs().sum()) > 0  # trained, not a fresh init
    x = torch.rand(3, 3, 71, 53, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = model(x)
        f_last = model(x[2:])
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and (f >= 0).all()
    torch.testing.assert_close(f[2:], f_last, rtol=1e-4, atol=1e-5)
    assert float((f[0] - f[1]).abs().max()) > 1e-3  # different images, different features


# ---------------------------------------------------------------- compute_fid


class MomentFeatures(nn.Module):
    """Parameter-free stand-in for Inception: per-channel mean, std and a horizontal gradient
    energy (9 features per image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = (x[..., 1:] - x[..., :-1]).pow(2).mean((2, 3))
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), grad], 1)


def _image_set(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.6 + 0.2
    return (base + 0.15 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def test_compute_fid_with_inception_self_zero_shifted_positive(inception):
    imgs = _image_set(4, 45, 61, seed=2)
    shifted = imgs * 0.6 + 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FIDSampleWarning)  # 4 samples of 2048-d features
        same = compute_fid(imgs, list(imgs), inception, batch_size=3)
        diff = compute_fid(imgs, shifted, inception, batch_size=4)
    assert diff > 1.0  # features of this random net have a total variance of about 20
    assert 0.0 <= same <= 1e-9 * diff


def test_compute_fid_inputs_and_batching():
    model = MomentFeatures()
    a = _image_set(13, 17, 23, seed=3)
    b = _image_set(11, 17, 23, seed=4)
    ref = fid_from_features(model(a), model(b))
    assert ref > 0
    mixed = [a[:4], a[4], a[5:9].mul(255).round().to(torch.uint8), *a[9:]]  # batch, single, uint8
    got = compute_fid(iter(mixed), b, model, batch_size=3)
    a_seen = torch.cat([a[:5], a[5:9].mul(255).round() / 255, a[9:]])
    assert got == pytest.approx(fid_from_features(model(a_seen), model(b)), rel=1e-6)
    assert compute_fid(a, b, model, batch_size=1) == pytest.approx(ref, rel=1e-6)
    assert compute_fid(a, a, model, batch_size=4) == pytest.approx(0.0, abs=1e-9)
    assert compute_fid(a, a * 0.5 + 0.25, model) > 0.01


def test_batches_group_by_size():
    imgs = [torch.rand(5, 3, 8, 8), torch.rand(3, 8, 8), torch.rand(3, 9, 11), torch.rand(1, 9, 11)]
    shapes = [tuple(b.shape) for b in fid_mod._batches(imgs, "x", batch_size=3)]
    assert shapes == [(3, 3, 8, 8), (3, 3, 8, 8), (2, 3, 9, 11)]
    mixed = [torch.rand(3, 8, 8), torch.rand(3, 9, 11), torch.rand(3, 8, 8), torch.rand(3, 9, 11)]
    assert len(list(fid_mod._batches(mixed, "x", batch_size=4))) == 4
    resized = [tuple(b.shape) for b in fid_mod._batches(mixed, "x", batch_size=4, input_size=(5, 6))]
    assert resized == [(4, 3, 5, 6)]


def test_inception_mixed_sizes_share_batches(inception):
    g = torch.Generator().manual_seed(3)
    imgs = [torch.rand(3, 45, 61, generator=g), torch.rand(3, 30, 20, generator=g), torch.rand(3, 299, 299, generator=g)]
    feats = extract_features(imgs, inception, batch_size=3)
    with torch.no_grad():
        one_by_one = torch.cat([inception(img[None]) for img in imgs])
    torch.testing.assert_close(feats, one_by_one, rtol=1e-4, atol=1e-5)


def test_extract_features_checks_and_restores_mode():
    model = MomentFeatures().train()
    with pytest.raises(AgdError, match=r"\[0, 1\]"):
        extract_features(torch.rand(4, 3, 9, 9) * 2 - 1, model)
    assert model.training
    with pytest.raises(AgdError, match="no images"):
        extract_features([], model)
    with pytest.raises(AgdError, match="not a folder"):
        extract_features(Path("/nonexistent/agd_fid_folder"), model)
    feats = extract_features(torch.rand(4, 1, 9, 9), model, batch_size=2)  # greyscale -> RGB
    assert feats.shape == (4, 9) and torch.equal(feats[:, 0], feats[:, 1])


def test_compute_fid_from_folders(tmp_path):
    pytest.importorskip("agd.data.images", reason="agd.data.images (read_image, list_images) not written yet")
    from PIL import Image

    model = MomentFeatures()
    sets = {"a": _image_set(9, 19, 13, seed=5), "b": _image_set(10, 19, 13, seed=6)}
    quantised = {}
    for name, imgs in sets.items():
        (tmp_path / name).mkdir()
        u8 = imgs.mul(255).round().to(torch.uint8)
        for i, img in enumerate(u8):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:02d}.png")
        quantised[name] = u8
    got = compute_fid(tmp_path / "a", str(tmp_path / "b"), model, batch_size=4)
    want = compute_fid(quantised["a"], quantised["b"], model, batch_size=4)
    assert got == pytest.approx(want, rel=1e-6)
    assert compute_fid(tmp_path / "a", tmp_path / "a", model) == pytest.approx(0.0, abs=1e-9)
