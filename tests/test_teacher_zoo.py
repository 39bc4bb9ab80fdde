"""The teacher zoo (tests/teacher_zoo.py): each factory loads its real weights strictly and behaves like
the published model: IMDN and SRVGGNetCompact reach their Set5 x4 Y-PSNR, the compressed horse2zebra
generator paints zebra stripes on the horse photo."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import teacher_zoo
from agd.data.images import read_image, write_image
from agd.data.resize import fit_image
from agd.metrics import psnr


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


def _build(factory, filename: str) -> torch.nn.Module:
    path = teacher_zoo.WEIGHTS / filename
    if not path.is_file():
        pytest.skip(f"teacher weights {path} are absent (see ../shared/data/README.md)")
    model = factory()
    assert not model.training
    return model


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _set5(shared_data):
    hr_dir = shared_data / "sr" / "Set5" / "HR"
    lr_dir = shared_data / "sr" / "Set5" / "LR_bicubic_x4"
    hrs = sorted(hr_dir.glob("*.png"))
    if len(hrs) != 5 or not lr_dir.is_dir():
        pytest.skip(f"Set5 (HR in {hr_dir}, LR x4 in {lr_dir}) is absent or incomplete")
    for hr_path in hrs:
        lr_path = lr_dir / f"{hr_path.stem}x4.bmp"
        if not lr_path.is_file():
            pytest.skip(f"Set5 LR x4 image {lr_path} is absent")
        yield hr_path.stem, read_image(hr_path), read_image(lr_path)


def _set5_x4_psnr(model: torch.nn.Module, shared_data) -> float:
    """Mean Set5 x4 Y-PSNR: HR cropped to 4x the LR size, 8-bit rounding, 4-pixel border."""
    scores = {}
    t0 = time.perf_counter()
    for name, hr, lr in _set5(shared_data):
        with torch.no_grad():
            sr = model(lr[None])[0]
        h, w = 4 * lr.shape[1], 4 * lr.shape[2]
        assert sr.shape == (3, h, w)
        scores[name] = psnr(sr, hr[:, :h, :w], crop=4, y_channel=True)
    mean = sum(scores.values()) / len(scores)
    print(f"Set5 x4 Y-PSNR { {k: round(v, 3) for k, v in scores.items()} } mean {mean:.3f} dB "
          f"({time.perf_counter() - t0:.1f} s)")
    return mean


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_zoo, "WEIGHTS", tmp_path)
    for factory, name in ((teacher_zoo.imdn_x4, "IMDN_x4.pth"), (teacher_zoo.srvgg_x4, "realesr-animevideov3.pth"),
                          (teacher_zoo.horse2zebra_mobile, "gancompression_horse2zebra_compressed.pth")):
        with pytest.raises(FileNotFoundError, match=name):
            factory()


def test_imdn_x4_on_set5(shared_data):
    model = _build(teacher_zoo.imdn_x4, "IMDN_x4.pth")
    assert _n_params(model) == 715_176
    assert abs(_set5_x4_psnr(model, shared_data) - 32.21) <= 0.05  # the published IMDN x4 Set5 number


def test_srvgg_x4_on_set5(shared_data):
    model = _build(teacher_zoo.srvgg_x4, "realesr-animevideov3.pth")
    assert _n_params(model) == 621_424
    assert abs(_set5_x4_psnr(model, shared_data) - 28.23) <= 0.1  # anime-tuned GAN: low by design


def test_horse2zebra_mobile_sizes():
    """Two stride-2 convs and two transposed convs: a side comes back unchanged when it is a multiple
    of 4 (from 8 up), is rounded up to the next multiple of 4 otherwise, and must be at least 5."""
    model = _build(teacher_zoo.horse2zebra_mobile, "gancompression_horse2zebra_compressed.pth")
    assert _n_params(model) == 356_867
    assert model.value_range == (-1.0, 1.0) and model.size_multiple == 4
    with torch.no_grad():
        for h, w in ((8, 12), (20, 36), (21, 35), (23, 5)):
            y = model(torch.rand(1, 3, h, w) * 2 - 1)
            assert y.shape[-2:] == (-(-h // 4) * 4, -(-w // 4) * 4)
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 3, 4, 16))


def _luma(img: torch.Tensor) -> torch.Tensor:
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def _laplacian(img: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None]
    y = _luma(img)[None, None]
    return F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), k)[0, 0].abs()


def test_horse2zebra_mobile_on_horse(shared_data, tmp_path):
    model = _build(teacher_zoo.horse2zebra_mobile, "gancompression_horse2zebra_compressed.pth")
    src = shared_data / "images" / "horse.jpg"
    if not src.is_file():
        pytest.skip(f"image {src} is absent")
    x = fit_image(read_image(src), 256, model.size_multiple)  # 208x256
    with torch.no_grad():
        out = model(x[None] * 2 - 1)[0]
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    y = (out + 1) / 2
    write_image(tmp_path / "horse2zebra.png", y)

    # the horse: dark, saturated, red-brown pixels of the input (about 13% of the picture)
    hi, lo = x.max(0).values, x.min(0).values
    sat = (hi - lo) / (hi + 1e-6)
    horse = (sat > 0.4) & (x[0] > x[2] + 0.05) & (hi < 0.6)
    assert 0.05 < horse.float().mean() < 0.3
    change = float((y - x).abs().mean())
    hf_in, hf_out = _laplacian(x), _laplacian(y)
    ratio_horse = float(hf_out[horse].mean() / hf_in[horse].mean())
    ratio_rest = float(hf_out[~horse].mean() / hf_in[~horse].mean())
    std_in, std_out = float(_luma(x)[horse].std()), float(_luma(y)[horse].std())
    bright = float((_luma(y)[horse] > 0.6).float().mean())
    dark = float((_luma(y)[horse] < 0.25).float().mean())
    print(f"mean abs change {change:.3f}; horse high-frequency x{ratio_horse:.2f} (rest x{ratio_rest:.2f}); "
          f"horse luma std {std_in:.3f} -> {std_out:.3f}; horse bright {bright:.3f}, dark {dark:.3f}; "
          f"output {tmp_path / 'horse2zebra.png'}")
    assert change > 0.05  # not close to the input
    assert ratio_horse > 2.0 and ratio_horse > 1.5 * ratio_rest  # stripes on the horse, not everywhere
    assert std_out > 1.5 * std_in
    assert bright > 0.04 and dark > 0.1  # white stripes appear on the dark horse; black ones remain
