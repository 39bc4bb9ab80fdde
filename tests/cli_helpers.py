"""Helpers shared by the command-line and pipeline tests: run ``agd`` in-process, write smooth random
images, save tiny teachers of both tasks."""

from __future__ import annotations

from pathlib import Path

import torch

from agd.cli import main
from agd.io import save_checkpoint
from agd.teachers import ResnetGenerator, RRDBNet


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``agd ARGS``."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def random_images(folder: Path, sizes) -> Path:
    """Uniform-noise PNGs im0.png, im1.png, ... of the given (h, w) sizes, seeded."""
    from agd.data.images import write_image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate(sizes):
        write_image(folder / f"im{i}.png", torch.rand(3, h, w, generator=g))
    return folder


def smooth_images(folder: Path, n: int = 4, hw=(72, 88)) -> Path:
    """``n`` smooth random images img0.png ... (a random low-res field upsampled: like photos more than noise)."""
    from agd.data.images import write_image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        low = torch.rand(3, 9, 11, generator=g)
        write_image(folder / f"img{i}.png", torch.nn.functional.interpolate(low[None], size=hw, mode="bilinear")[0])
    return folder


def save_tiny_teachers(d: Path) -> dict[str, str]:
    """A tiny RRDBNet x4 (BasicSR keys) and a tiny CycleGAN generator, seeded: {"sr": path, "translation": path}."""
    torch.manual_seed(0)
    save_checkpoint({"params_ema": RRDBNet(nf=8, nb=1, gc=4, scale=4).state_dict()}, d / "sr.pth")
    save_checkpoint(ResnetGenerator(ngf=4, n_blocks=1, norm_affine=True).state_dict(), d / "tr.pth")
    return {"sr": str(d / "sr.pth"), "translation": str(d / "tr.pth")}
