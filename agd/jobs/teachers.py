"""The teacher jobs (``agd teachers list`` and ``agd teachers run``): their table, and a teacher over a folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from agd.cost import count_macs, count_params
from agd.data.images import list_images
from agd.io import AgdError
from agd.jobs.progress import images_to_folder
from agd.teachers import list_teachers, load_teacher, tiled_forward


def teacher_rows() -> list[dict]:
    """One row per named teacher: task, scale, params and MACs at its reference input size (counted
    on the architecture, so they show before the weights are installed), installed or how to install."""
    rows = []
    for info in list_teachers():
        arch = info.build_architecture()
        rows.append({
            "name": info.name,
            "task": info.task,
            "scale": info.scale,
            "params": count_params(arch),
            "gmacs": count_macs(arch, info.reference_input) / 1e9,
            "reference_input": "x".join(map(str, info.reference_input)),
            "installed": info.is_installed(),
            "install": info.install,
            "description": info.description,
        })
    return rows


def run_teacher_on_folder(
    spec,
    in_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    tile: int = 256,
    overlap: int = 16,
    task: str | None = None,
    scale: int | None = None,
) -> list[Path]:
    """Run a teacher over every image of ``in_dir``; write ``<stem>.png`` into ``out_dir``.

    Images are processed one at a time and tile by tile, so memory is bounded by the tile size, not the
    image size. Existing outputs are overwritten atomically; an interrupted run leaves only whole files.
    """
    kwargs = {k: v for k, v in (("task", task), ("scale", scale)) if v is not None}  # or in a TeacherSpec
    dev = torch.device(device)
    teacher = load_teacher(spec, device=dev, **kwargs)
    print(teacher.describe())
    files = list_images(in_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(in_dir).resolve():
        raise AgdError(f"OUT_DIR {out_dir}: must differ from IN_DIR (outputs would overwrite inputs)")
    scale_ = teacher.info.scale

    def forward(path: Path, img: torch.Tensor, on_tile: Callable[[int, int], None], console: Console) -> torch.Tensor:
        with torch.inference_mode():
            return tiled_forward(teacher, img, scale=scale_, tile=tile, overlap=overlap, progress=on_tile)

    return images_to_folder(files, out_dir, teacher.info.name, dev, forward)
