"""``agd apply``: a trained student over a folder of images, tile by tile (the work is in
:mod:`agd.jobs.apply`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agd.jobs.apply import run_student_on_folder

app = typer.Typer()


@app.command("apply")
def apply_cmd(
    genotype: Path = typer.Argument(..., help="Genotype JSON of the student (from agd search / agd train)."),
    in_dir: Path = typer.Argument(..., help="Folder of input images (png/jpg/bmp/tif/webp)."),
    out_dir: Path = typer.Argument(..., help="Folder for the output PNGs, <stem>.png each (created)."),
    weights: Path = typer.Option(..., help="Trained student weights (student.safetensors from agd train)."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu, cuda, cuda:1."),
    tile: Optional[int] = typer.Option(None, min=16, help="Tile size in input pixels; bounds memory for large images. "
                                       "Default: 256 for SR; 1024 for translation, i.e. the whole image up to 1024x1024."),
    overlap: int = typer.Option(16, min=0, help="Overlap between tiles in input pixels (less than half the tile)."),
) -> None:
    """Run a trained student over a folder of images, tile by tile, with a progress bar.

    SR students upscale by their factor; translation students keep the size. Translation students hold
    InstanceNorm, so each tile is normalised on its own statistics: for exact whole-image results use a
    tile at least the image size (the default does so up to 1024x1024).
    """
    run_student_on_folder(genotype, in_dir, out_dir, weights=weights, device=device, tile=tile, overlap=overlap)
