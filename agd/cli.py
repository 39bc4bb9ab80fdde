"""The ``agd`` command line.

Every user error (a bad path, an unknown name, a corrupt file) is an :class:`agd.io.AgdError`, printed
as one line on stderr with exit status 2; nothing half-written is left behind (outputs are atomic).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from agd.io import AgdError

app = typer.Typer(
    name="agd",
    help="Compress pretrained image generators: distillation-guided NAS, training, evaluation, TVM compilation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
teachers_app = typer.Typer(help="Pretrained teacher generators: list them, run them on images.", no_args_is_help=True)
app.add_typer(teachers_app, name="teachers")
space_app = typer.Typer(help="Search spaces: their layers, choices, size and cost range.", no_args_is_help=True)
app.add_typer(space_app, name="space")
arch_app = typer.Typer(help="Chosen architectures (genotype JSON files).", no_args_is_help=True)
app.add_typer(arch_app, name="arch")

# Command groups defined in their own modules (agd/commands/*.py, each exposing a typer app; keep heavy
# imports inside the command functions so `agd --help` stays fast). One registration line per group:
# -- registered command groups --
from agd.commands.bench import bench_app  # noqa: E402
app.add_typer(bench_app, name="bench")
from agd.commands.compress_cli import RANGE_HELP, SCALE_HELP, TASK_HELP  # noqa: E402
from agd.commands.compress_cli import baseline_cmd, compress_cmd, eval_cmd, search_cmd, train_cmd  # noqa: E402
app.command("baseline")(baseline_cmd)
app.command("search")(search_cmd)
app.command("train")(train_cmd)
app.command("eval")(eval_cmd)
app.command("compress")(compress_cmd)
from agd.commands.tvm import compile_cmd, latency_app, latency_table_app  # noqa: E402
app.command("compile")(compile_cmd)
app.add_typer(latency_app, name="latency")
app.add_typer(latency_table_app, name="latency-table")
from agd.commands.bench_deploy import bench_deploy_cmd  # noqa: E402
bench_app.command("deploy")(bench_deploy_cmd)
from agd.commands.apply import apply_cmd  # noqa: E402
app.command("apply")(apply_cmd)


def _size(size: Optional[str]) -> Optional[tuple[int, int]]:
    from agd.commands.tvm import parse_size

    return parse_size(size)


def _console():
    from rich.console import Console

    return Console()


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Versions, and every backend with whether it is usable here and why not."""
    from agd.backends import all_backends, versions

    vers = versions()
    backends = all_backends()
    if as_json:
        typer.echo(json.dumps({"versions": vers, "backends": [b.__dict__ for b in backends]}, indent=2))
        return
    from rich.table import Table

    con = _console()
    for k, v in vers.items():
        con.print(f"{k + ':':10} {v}", highlight=False)
    table = Table(title="backends", title_justify="left")
    table.add_column("backend")
    table.add_column("status")
    table.add_column("reason")
    for b in backends:
        table.add_row(b.name, "[green]available[/]" if b.available else "[red]unavailable[/]", b.reason)
    con.print(table)


@teachers_app.command("list")
def teachers_list(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Named teachers: task, scale, params, MACs at the reference size, installed or how to install."""
    from agd.commands.teachers import teacher_rows

    rows = teacher_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table()
    for col in ("name", "task", "scale", "params", "MACs", "input"):
        table.add_column(col, no_wrap=True)
    table.add_column("installed", overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["task"], f"x{r['scale']}" if r["task"] == "sr" else "-",
                      f"{r['params'] / 1e6:.3f} M", f"{r['gmacs']:.2f} G", r["reference_input"],
                      "yes" if r["installed"] else f"no: {r['install']}")
    _console().print(table)


@teachers_app.command("run")
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
    from agd.commands.teachers import run_teacher_on_folder
    from agd.teachers import TeacherSpec, parse_range

    run_teacher_on_folder(TeacherSpec(name, task, scale, parse_range(teacher_range)), in_dir, out_dir, device=device,
                          tile=tile, overlap=overlap)


@space_app.command("show")
def space_show(
    task: str = typer.Option("translation", "--task", help="translation or sr, or a preset name (translation-tiny, sr-x2, ...)."),
    size: Optional[str] = typer.Option(None, help="Input size HxW for the MACs (default: the space's reference size)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """A space's layers and choices, its number of architectures, min/max MACs and the teacher's MACs."""
    from agd.commands.space import space_summary
    from agd.cost import format_count

    s = space_summary(task, _size(size))
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    from rich.table import Table

    con = _console()
    table = Table(title=f"space {s['space']} ({s['kind']}{' x' + str(s['scale']) if s['kind'] == 'sr' else ''}), "
                        f"input {'x'.join(map(str, s['input']))}", title_justify="left")
    for col in ("layer", "operators", "widths", "input size"):
        table.add_column(col)
    for layer in s["layers"]:
        table.add_row(layer["name"], ", ".join(layer["ops"]), ", ".join(map(str, layer["widths"])),
                      "x".join(map(str, layer["input_size"])))
    con.print(table)
    con.print(f"searchable layers: {s['searchable_layers']}   architectures: {s['architectures']:.3e} ({s['architectures']})",
              highlight=False)
    con.print(f"MACs: min {format_count(s['min_macs'])} (exact {s['min_macs']}), max {format_count(s['max_macs'])} "
              f"(exact {s['max_macs']})", highlight=False)
    if s["teacher_macs"] is not None:
        con.print(f"teacher {s['teacher']}: {format_count(s['teacher_macs'])}MACs at the same input "
                  f"(max/teacher {s['max_macs'] / s['teacher_macs']:.3f}, min/teacher {s['min_macs'] / s['teacher_macs']:.4f})",
                  highlight=False)


@arch_app.command("show")
def arch_show(
    genotype: Path = typer.Argument(..., help="A genotype JSON file (see examples/)."),
    png: Optional[Path] = typer.Option(None, help="Also draw the generator into this PNG file."),
    size: Optional[str] = typer.Option(None, help="Input size HxW (default: the space's reference size)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """The derived generator layer by layer: operator, widths, sizes, MACs and params."""
    from agd.commands.space import arch_rows, draw_architecture, load_genotype
    from agd.cost import format_count

    g = load_genotype(genotype)
    rows, total = arch_rows(g, _size(size))
    if png is not None:
        draw_architecture(rows, total, png, title=f"{genotype.name} ({total['kind']})")
    if as_json:
        typer.echo(json.dumps({"layers": rows, "total": total, "png": str(png) if png else None}, indent=1))
        return
    from rich.table import Table

    table = Table(title=f"{genotype} ({total['kind']}), input {'x'.join(map(str, total['input']))}", title_justify="left")
    for col in ("layer", "op", "in -> out", "output size", "MACs", "params"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["op"], f"{r['in']} -> {r['out']}", "x".join(map(str, r["output_size"])),
                      format_count(r["macs"]), format_count(r["params"]))
    table.add_row("total", "", "", "", format_count(total["macs"]), format_count(total["params"]))
    con = _console()
    con.print(table)
    if png is not None:
        con.print(f"wrote {png}", highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder for images and the summary table."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu, cuda."),
    max_side: int = typer.Option(256, min=32, help="Longest side of each sample image (HR) in pixels."),
    sr_teacher: str = typer.Option("realesrgan-x4plus", help="Super-resolution teacher."),
    translation_teacher: str = typer.Option("vintage", help="Image-to-image translation teacher."),
) -> None:
    """The main job on its embedded default: the teachers at work on the built-in sample images.

    Each sample is downscaled x4 (MATLAB bicubic), upscaled by the SR teacher and by bicubic
    interpolation (the honest baseline), and translated by the translation teacher; PNGs and a summary
    table (PSNR/SSIM, params, MACs, time) are written to OUT.
    """
    from agd.commands.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, device=device, max_side=max_side, sr_teacher=sr_teacher,
                        translation_teacher=translation_teacher))


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except AgdError as e:
        print(f"agd: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("agd: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        # usage errors and exits of click (typer >= 0.29 vendors it as typer._click): matched by shape,
        # so this works with either
        code = getattr(e, "exit_code", None)
        if code is not None and callable(getattr(e, "show", None)):
            e.show()
            sys.exit(code)
        if code is not None and type(e).__name__ == "Exit":
            sys.exit(code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
