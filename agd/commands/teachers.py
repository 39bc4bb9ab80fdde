"""``agd teachers list`` and ``agd teachers run`` (the work is in :mod:`agd.jobs.teachers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from agd.commands.options import JSON_HELP, RANGE_HELP, SCALE_HELP, TASK_HELP
from agd.jobs.teachers import run_teacher_on_folder, teacher_rows
from agd.teachers import TeacherSpec, parse_range

app = typer.Typer(name="teachers", help="Pretrained teacher generators: list them, run them on images.", no_args_is_help=True)


@app.command("list")
def teachers_list(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Named teachers: task, scale, params, MACs at the reference size, installed or how to install."""
    rows = teacher_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("name", "task", "scale", "params", "MACs", "input"):
        table.add_column(col, no_wrap=True)
    table.add_column("installed", overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["task"], f"x{r['scale']}" if r["task"] == "sr" else "-",
                      f"{r['params'] / 1e6:.3f} M", f"{r['gmacs']:.2f} G", r["reference_input"],
                      "yes" if r["installed"] else f"no: {r['install']}")
    Console().print(table)


@app.command("run")
def teachers_run(
    name: str = typer.Argument(..., help="A named teacher (agd teachers list), a checkpoint, module:factory or a .pt2 file."),
    in_dir: Path = typer.Argument(..., help="Folder of input images (png/jpg/bmp/tif)."),
    out_dir: Path = typer.Argument(..., help="Folder for the output PNGs (created)."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu, cuda, cuda:1."),
    tile: int = typer.Option(256, min=16, help="Tile size in input pixels; bounds memory for large images."),
    overlap: int = typer.Option(16, min=0, help="Overlap between tiles in input pixels."),
    task: Optional[str] = typer.Option(None, help=TASK_HELP),
    scale: Optional[int] = typer.Option(None, min=1, help=SCALE_HELP),
    teacher_range: Optional[str] = typer.Option(None, "--teacher-range", help=RANGE_HELP),
) -> None:
    """Run a teacher over a folder of images, tile by tile, with a progress bar."""
    run_teacher_on_folder(TeacherSpec(name, task, scale, parse_range(teacher_range)), in_dir, out_dir, device=device,
                          tile=tile, overlap=overlap)
