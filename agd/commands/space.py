"""``agd space show``: a space's layers and choices, its size and cost range (the figures come from
:mod:`agd.jobs.describe`)."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from agd.commands.options import AsJson, parse_size
from agd.cost import format_count
from agd.jobs.describe import space_summary

app = typer.Typer(name="space", help="Search spaces: their layers, choices, size and cost range.", no_args_is_help=True)


@app.command("show")
def space_show(
    task: str = typer.Option("translation", "--task", help="translation or sr, or a preset name (translation-tiny, sr-x2, ...)."),
    size: Optional[str] = typer.Option(None, help="Input size HxW for the MACs (default: the space's reference size)."),
    as_json: AsJson = False,
) -> None:
    """A space's layers and choices, its number of architectures, min/max MACs and the teacher's MACs."""
    s = space_summary(task, parse_size(size))
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    con = Console()
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
