"""What the jobs show while they run: a console that can be silenced, a step progress bar with ETA, and the
images-and-tiles bars of a run over a folder of images."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from agd.data.images import read_image, write_image

# forward(path, image (1, 3, H, W) on the device, on_tile(done, total), console) -> the output image batch
FolderForward = Callable[[Path, torch.Tensor, Callable[[int, int], None], Console], torch.Tensor]


@contextlib.contextmanager
def progress_bar(console: Console, quiet: bool, title: str, total: int,
                 expected_unit: float = 1e9) -> Iterator[Callable[[dict], None]]:
    """A progress bar with ETA; yields the per-step callback (``rec`` dicts with ``step`` and losses)."""
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*cols, console=console, disable=quiet) as progress:
        task = progress.add_task(title, total=total)

        def on_step(rec: dict) -> None:
            if "event" in rec:
                progress.console.print(f"warning: {rec['event']}", highlight=False)
                return
            loss = rec.get("loss_w", rec.get("loss", float("nan")))
            desc = f"{rec.get('phase', title)} loss {loss:.4f}"
            if "expected" in rec:
                desc += (f" E[cost] {rec['expected'] / expected_unit:.2f}{'G' if expected_unit == 1e9 else 'ms'}"
                         f" λ {rec['lam']:.2f}")
            progress.update(task, completed=rec["step"] + 1, description=desc)

        yield on_step


def images_to_folder(files: list[Path], out_dir: Path, title: str, device: torch.device,
                     forward: FolderForward) -> list[Path]:
    """Each image of ``files``, one at a time, through ``forward`` into ``out_dir/<stem>.png`` (atomic,
    overwriting), with a bar over the images and one over the current image's tiles; the written paths."""
    written = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        images_task = progress.add_task(f"{title}: images", total=len(files))
        tiles_task = progress.add_task("tiles", total=None)
        for path in files:
            img = read_image(path).unsqueeze(0).to(device)
            progress.update(tiles_task, completed=0, total=None, description=f"  {path.name}")

            def on_tile(done: int, total: int) -> None:
                progress.update(tiles_task, completed=done, total=total)

            t0 = time.perf_counter()
            y = forward(path, img, on_tile, progress.console)
            dest = Path(out_dir) / f"{path.stem}.png"
            write_image(dest, y[0].cpu())
            written.append(dest)
            progress.console.print(f"{path.name} -> {dest} ({(time.perf_counter() - t0):.1f} s)", highlight=False)
            progress.advance(images_task)
    return written
