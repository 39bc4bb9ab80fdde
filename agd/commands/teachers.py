"""``agd teachers list`` and ``agd teachers run``."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from agd.io import AgdError


def teacher_rows() -> list[dict]:
    """One row per named teacher: task, scale, params and MACs at its reference input size (counted
    on the architecture, so they show before the weights are installed), installed or how to install."""
    from agd.cost import count_macs, count_params
    from agd.teachers import list_teachers

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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agd.data.images import list_images, read_image, write_image
    from agd.teachers import load_teacher, tiled_forward

    kwargs = {k: v for k, v in (("task", task), ("scale", scale)) if v is not None}  # or in a TeacherSpec
    dev = torch.device(device)
    teacher = load_teacher(spec, device=dev, **kwargs)
    print(teacher.describe())
    files = list_images(in_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(in_dir).resolve():
        raise AgdError(f"OUT_DIR {out_dir}: must differ from IN_DIR (outputs would overwrite inputs)")
    scale_ = teacher.info.scale
    written = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        images_task = progress.add_task(f"{teacher.info.name}: images", total=len(files))
        tiles_task = progress.add_task("tiles", total=None)
        for path in files:
            img = read_image(path).unsqueeze(0).to(dev)
            progress.update(tiles_task, completed=0, total=None, description=f"  {path.name}")

            def on_tile(done: int, total: int) -> None:
                progress.update(tiles_task, completed=done, total=total)

            t0 = time.perf_counter()
            with torch.inference_mode():
                y = tiled_forward(teacher, img, scale=scale_, tile=tile, overlap=overlap, progress=on_tile)
            dest = out_dir / f"{path.stem}.png"
            write_image(dest, y[0].cpu())
            written.append(dest)
            progress.console.print(f"{path.name} -> {dest} ({(time.perf_counter() - t0):.1f} s)", highlight=False)
            progress.advance(images_task)
    return written
