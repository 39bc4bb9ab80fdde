"""The apply job (``agd apply``): run a trained student (genotype + weights) over a folder of images, tile by tile.

Tiling is the one ``agd teachers run`` uses (:func:`agd.teachers.tiled_forward`): memory is bounded by
the tile, and an SR student's tiled output equals its whole-image output when its receptive-field radius
is at most ``overlap / 4`` input pixels. Translation students hold InstanceNorm, which normalises each
tile on its own statistics; their default tile (1024) runs any image up to 1024x1024 in one pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from safetensors import safe_open

from agd.arch import Genotype
from agd.arch.student import load_student
from agd.data.images import list_images
from agd.io import AgdError
from agd.jobs.progress import images_to_folder
from agd.teachers import tiled_forward

DEFAULT_TILE = {"sr": 256, "translation": 1024}


def default_tile(task: str) -> int:
    """The tile used when none is given: 256 for SR, 1024 (whole images up to 1024x1024) for translation."""
    return DEFAULT_TILE.get(task, 256)


def _check_weights_genotype(genotype_path: Path, weights: Path) -> None:
    """Refuse weights whose safetensors metadata (written by ``agd train``) names another architecture."""
    if weights.suffix != ".safetensors" or not weights.is_file():
        return
    try:
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
        trained = Genotype.from_dict(json.loads(meta["genotype"]), "weights metadata")
    except Exception:  # no or unreadable metadata: load_student's shape checks still apply
        return
    g = Genotype.load(genotype_path)
    key = lambda x: (x.task, x.scale, [(c.name, c.op, c.width) for c in x.layers])  # noqa: E731
    if key(trained) != key(g):
        raise AgdError(f"student weights {weights}: were trained for another architecture than the genotype "
                       f"{genotype_path} (see the genotype.json next to them)")


def load_applicable_student(genotype_path: Path, weights: Path, device: str = "cpu"):
    """The student of ``genotype_path`` with ``weights``, in eval mode on ``device``; AgdError naming the
    file at fault when either is missing or they do not fit each other."""
    genotype_path, weights = Path(genotype_path), Path(weights)
    if not genotype_path.is_file():
        raise AgdError(f"genotype {genotype_path}: no such file")
    if not weights.is_file():
        raise AgdError(f"student weights {weights}: no such file")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise AgdError(f"--device {device}: not a torch device ({str(e).splitlines()[0]})") from None
    _check_weights_genotype(genotype_path, weights)
    try:
        return load_student(genotype_path, weights, device=dev)
    except (RuntimeError, ValueError) as e:  # load_state_dict's size mismatches
        msg = " ".join(str(e).split())[:300]
        raise AgdError(f"student weights {weights}: do not fit the genotype {genotype_path} ({msg})") from None


def apply_student(student, img: torch.Tensor, *, tile: int, overlap: int,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``student`` on a (N, 3, H, W) [0, 1] image, tile by tile; (N, 3, H * scale, W * scale), unquantised.

    The student is called directly: :func:`tiled_forward` needs only a callable (and honours a
    ``tileable`` attribute, which students do not set)."""
    with torch.inference_mode():
        return tiled_forward(student, img, scale=student.scale, tile=tile, overlap=overlap, progress=progress)


def min_side(student, device: torch.device, limit: int = 64) -> int | None:
    """The smallest square side the student takes (probed on zeros), or None if none up to ``limit``."""
    for s in range(1, limit + 1):
        try:
            with torch.inference_mode():
                student(torch.zeros(1, 3, s, s, device=device))
            return s
        except (RuntimeError, ValueError):
            continue
    return None


def run_student_on_folder(
    genotype_path: Path,
    in_dir: Path,
    out_dir: Path,
    *,
    weights: Path,
    device: str = "cpu",
    tile: int | None = None,
    overlap: int = 16,
) -> list[Path]:
    """Run the student of ``genotype_path`` + ``weights`` over every image of ``in_dir``; write
    ``<stem>.png`` into ``out_dir`` (atomically, overwriting). ``tile=None``: :func:`default_tile`."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = list_images(in_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise AgdError(f"OUT_DIR {out_dir}: must differ from IN_DIR (outputs would overwrite inputs)")
    if out_dir.exists() and not out_dir.is_dir():
        raise AgdError(f"OUT_DIR {out_dir}: exists and is not a folder")
    student = load_applicable_student(genotype_path, weights, device)
    dev = next(student.parameters()).device
    tile = default_tile(student.task) if tile is None else tile
    if tile > 0 and (overlap < 0 or 2 * overlap >= tile):
        raise AgdError(f"--overlap {overlap}: must be >= 0 and less than half the tile ({tile})")

    def forward(path: Path, img: torch.Tensor, on_tile: Callable[[int, int], None], console: Console) -> torch.Tensor:
        h, w = img.shape[-2:]
        if student.task == "translation" and 0 < tile < max(h, w):
            console.print(f"note: {path.name} ({h}x{w}) is larger than the tile {tile}: each tile is normalised on "
                          f"its own (InstanceNorm); --tile {max(h, w)} gives the whole-image result", highlight=False)
        try:
            return apply_student(student, img, tile=tile, overlap=overlap, progress=on_tile)
        except (RuntimeError, ValueError) as e:
            m = min_side(student, dev)
            if m is not None and min(h, w) < m:
                raise AgdError(f"image {path}: {h}x{w} is too small for this {student.task} student "
                               f"(it takes sides of at least {m} pixels)") from None
            msg = " ".join(str(e).split())[:300]
            raise AgdError(f"image {path}: the student failed on this {h}x{w} image ({msg})") from None

    return images_to_folder(files, out_dir, Path(genotype_path).name, dev, forward)
