import math

import numpy as np
import pytest
import torch
from PIL import Image

from agd.data import (
    ImageFolder, SRPairs, TeacherCache, UnpairedFolders, bicubic_degrade, image_hash, imresize, list_images,
    read_image, resize_weights, sample_files, sample_images, write_image,
)
from agd.io import AgdError


# ---------------------------------------------------------------- resize
def _cubic(x):
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def _resize_1d_loop(a: np.ndarray, out_len: int, s: float) -> np.ndarray:
    """Direct per-pixel MATLAB bicubic along axis 0 (float64), written independently of agd's tables."""
    n = a.shape[0]
    k = (lambda x: s * _cubic(s * x)) if s < 1 else _cubic
    width = 4 / s if s < 1 else 4
    out = np.zeros((out_len,) + a.shape[1:])
    for j in range(1, out_len + 1):
        u = j / s + 0.5 * (1 - 1 / s)
        taps = range(math.floor(u - width / 2), math.floor(u - width / 2) + math.ceil(width) + 2)
        ws = np.array([k(u - t) for t in taps])
        ws /= ws.sum()
        for wt, t in zip(ws, taps):
            i = t - 1
            while i < 0 or i >= n:  # symmetric (mirror) padding
                i = -i - 1 if i < 0 else 2 * n - 1 - i
            out[j - 1] += wt * a[i]
    return out


@pytest.mark.parametrize("hw,scale", [((13, 17), 0.37), ((13, 17), 2.5), ((9, 8), 0.25), ((5, 7), 4.0)])
def test_imresize_matches_direct_loop(hw, scale):
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, *hw, dtype=torch.float64, generator=g)
    out = imresize(img, scale)
    oh, ow = math.ceil(hw[0] * scale), math.ceil(hw[1] * scale)
    a = img.permute(1, 2, 0).numpy()
    # MATLAB order: the smaller scale first (both equal here: height first)
    ref = _resize_1d_loop(a, oh, scale)
    ref = _resize_1d_loop(ref.transpose(1, 0, 2), ow, scale).transpose(1, 0, 2)
    assert out.shape == (2, oh, ow)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-12)


def test_imresize_properties():
    idx, w = resize_weights(37, 10, 10 / 37)
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert idx.min() >= 0 and idx.max() < 37
    const = torch.full((3, 11, 14), 0.3)
    assert torch.allclose(imresize(const, 0.5), torch.full((3, 6, 7), 0.3))
    x = torch.rand(1, 3, 10, 12)
    assert torch.equal(imresize(x, 1.0), x)
    assert imresize(x, size=(5, 7)).shape == (1, 3, 5, 7)
    assert imresize(x.double(), 0.5).dtype == torch.float64
    with pytest.raises(AgdError, match="exactly one"):
        imresize(x, 0.5, size=(4, 4))
    with pytest.raises(AgdError, match="unknown"):
        imresize(x, 0.5, kernel="lanczos7")


def test_bicubic_x4_reproduces_set5_lr(shared_data):
    """Our MATLAB-bicubic x4 of Set5 HR against the distributed MATLAB LR: >= 55 dB on each image in
    float (measured: worst 57.71 dB, butterfly), and bit-exact with MATLAB's uint8 passes."""
    d = shared_data / "sr/Set5"
    for hr_path in list_images(d / "HR"):
        hr = read_image(hr_path)
        h, w = hr.shape[1] - hr.shape[1] % 4, hr.shape[2] - hr.shape[2] % 4
        hr = hr[:, :h, :w]
        given = read_image(d / "LR_bicubic_x4" / f"{hr_path.stem}x4.bmp").double()
        lr_float = imresize(hr.double(), 1 / 4).clamp(0, 1)
        p = 10 * math.log10(1 / float(((lr_float - given) ** 2).mean()))
        assert p >= 57.5, (hr_path.name, p)
        exact = bicubic_degrade(hr, 4)
        assert torch.equal((exact.double() * 255).round(), (given * 255).round()), hr_path.name


# ---------------------------------------------------------------- images
def test_image_roundtrip_and_modes(tmp_path):
    x = torch.rand(3, 7, 9)
    write_image(tmp_path / "a.png", x)
    y = read_image(tmp_path / "a.png")
    assert y.shape == (3, 7, 9) and y.dtype == torch.float32
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6
    Image.fromarray((np.arange(30, dtype=np.uint8).reshape(5, 6) * 8)).save(tmp_path / "g.bmp")
    g = read_image(tmp_path / "g.bmp")
    assert g.shape == (3, 5, 6) and torch.equal(g[0], g[1])
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "d.png")
    assert torch.allclose(read_image(tmp_path / "d.png"), torch.ones(3, 4, 4))
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "d.png", "g.bmp"]


def test_image_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(AgdError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(AgdError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AgdError, match="holds no image"):
        list_images(tmp_path / "empty")
    with pytest.raises(AgdError, match="does not exist"):
        list_images(tmp_path / "nope")


# ---------------------------------------------------------------- datasets
def _folder(tmp_path, name, sizes, seed=0):
    d = tmp_path / name
    d.mkdir()
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return d


def test_sr_pairs_made_and_given(tmp_path):
    hr_dir = _folder(tmp_path, "hr", [(33, 42), (40, 41)])
    ds = SRPairs(hr_dir, 4)
    item = ds[0]
    assert item["hr"].shape == (3, 32, 40) and item["lr"].shape == (3, 8, 10) and item["name"] == "img0"
    assert torch.allclose(item["lr"], bicubic_degrade(item["hr"], 4))
    assert torch.equal(ds[0]["lr"], item["lr"])  # the in-memory 8-bit LR is exact
    # a given LR folder, with one wrong size
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    write_image(lr_dir / "img0x4.png", item["lr"])
    write_image(lr_dir / "img1x4.png", torch.rand(3, 9, 9))
    given = SRPairs(hr_dir, 4, lr_dir=lr_dir)
    assert torch.allclose(given[0]["lr"], item["lr"], atol=1e-6)
    with pytest.raises(AgdError, match="img1x4.png.*expected 10x10"):
        given[1]
    (lr_dir / "img1x4.png").unlink()
    with pytest.raises(AgdError, match="no image for HR 'img1'"):
        SRPairs(hr_dir, 4, lr_dir=lr_dir)


def test_sr_patches_aligned_seeded_and_epoch_dependent(tmp_path):
    hr_dir = _folder(tmp_path, "hr", [(64, 80)])
    ds = SRPairs(hr_dir, 2, patch=7, flips=True, seed=3)
    a, b = ds[0], ds[0]
    assert torch.equal(a["lr"], b["lr"]) and a["lr"].shape == (3, 7, 7) and a["hr"].shape == (3, 14, 14)
    # the HR patch is the one the LR patch was made from: downscaling the HR patch's source region
    lr_full, hr_full = ds.pair(0)
    found = any(
        torch.equal(a["hr"], c) for c in _all_flips_of_crops(hr_full, 14, 2)
    )
    assert found
    crops = set()
    for e in range(6):
        ds.set_epoch(e)
        crops.add(ds[0]["lr"].sum().item())
    assert len(crops) > 1
    with pytest.raises(AgdError, match="smaller than the 99x99 crop"):
        SRPairs(hr_dir, 2, patch=99)[0]


def _all_flips_of_crops(img, size, step):
    for t in range(0, img.shape[1] - size + 1, step):
        for l in range(0, img.shape[2] - size + 1, step):
            c = img[:, t:t + size, l:l + size]
            for h in (False, True):
                for v in (False, True):
                    for tr in (False, True):
                        x = c.flip(-1) if h else c
                        x = x.flip(-2) if v else x
                        yield x.transpose(-1, -2) if tr else x


def test_image_folder_and_unpaired(tmp_path):
    a = _folder(tmp_path, "a", [(20, 30), (25, 25), (31, 17)], seed=1)
    b = _folder(tmp_path, "b", [(22, 22)], seed=2)
    ds = ImageFolder(a, crop=16, flips=True, seed=0)
    assert len(ds) == 3 and all(ds[i].shape == (3, 16, 16) for i in range(3))
    assert torch.equal(ds[1], ImageFolder(a, crop=16, flips=True, seed=0)[1])
    u = UnpairedFolders(a, b, crop=16, seed=0)
    assert len(u) == 3
    item = u[2]
    assert item["a"].shape == item["b"].shape == (3, 16, 16) and item["b_name"] == "img0"
    loader = torch.utils.data.DataLoader(u, batch_size=3)
    batch = next(iter(loader))
    assert batch["a"].shape == (3, 3, 16, 16)


# ---------------------------------------------------------------- cache
def test_teacher_cache(tmp_path):
    calls = []

    def teacher(x):
        calls.append(1)
        return x * 2

    img = torch.rand(3, 10, 12)
    h = image_hash(img)
    assert h == image_hash(img.clone()) and h != image_hash(img + 1e-3)
    cache = TeacherCache(tmp_path, "realesrgan-x4plus@sha256:abc")
    crop = (1, 2, 5, 6)
    out = cache.run(teacher, img[:, 1:6, 2:8], img_hash=h, crop=crop)
    again = TeacherCache(tmp_path, "realesrgan-x4plus@sha256:abc").run(teacher, img[:, 1:6, 2:8], img_hash=h, crop=crop)
    assert len(calls) == 1 and torch.equal(out, again)
    cache.run(teacher, img[:, 0:5, 2:8], img_hash=h, crop=(0, 2, 5, 6))  # another crop: computed
    TeacherCache(tmp_path, "realesrgan-x4plus@sha256:def").run(teacher, img[:, 1:6, 2:8], img_hash=h, crop=crop)
    assert len(calls) == 3
    # a damaged entry is recomputed, not trusted
    p = cache.path(cache.key(h, crop))
    p.write_bytes(b"garbage")
    assert torch.equal(cache.run(teacher, img[:, 1:6, 2:8], img_hash=h, crop=crop), out)
    assert len(calls) == 4 and cache.hits == 0 and cache.misses == 3
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------- samples
def test_builtin_samples_ship_in_wheels():
    files = sample_files()
    assert {"astronaut", "coffee", "chelsea", "rocket"} <= {s.name for s in files}
    name, img = sample_images(["coffee"])[0]
    assert name == "coffee" and img.shape == (3, 400, 600) and 0 <= img.min() and img.max() <= 1
    assert img.std() > 0.1
    with pytest.raises(AgdError, match="unknown nope"):
        sample_images(["nope"])
