"""``agd arch show``: a chosen architecture layer by layer, optionally drawn (the figures and the drawing come
from :mod:`agd.jobs.describe`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from agd.commands.options import AsJson, parse_size
from agd.cost import format_count
from agd.jobs.describe import arch_rows, draw_architecture, load_genotype

app = typer.Typer(name="arch", help="Chosen architectures (genotype JSON files).", no_args_is_help=True)


@app.command("show")
def arch_show(
    genotype: Path = typer.Argument(..., help="A genotype JSON file (see examples/)."),
    png: Optional[Path] = typer.Option(None, help="Also draw the generator into this PNG file."),
    size: Optional[str] = typer.Option(None, help="Input size HxW (default: the space's reference size)."),
    as_json: AsJson = False,
) -> None:
    """The derived generator layer by layer: operator, widths, sizes, MACs and params."""
    g = load_genotype(genotype)
    rows, total = arch_rows(g, parse_size(size))
    if png is not None:
        draw_architecture(rows, total, png, title=f"{genotype.name} ({total['kind']})")
    if as_json:
        typer.echo(json.dumps({"layers": rows, "total": total, "png": str(png) if png else None}, indent=1))
        return
    table = Table(title=f"{genotype} ({total['kind']}), input {'x'.join(map(str, total['input']))}", title_justify="left")
    for col in ("layer", "op", "in -> out", "output size", "MACs", "params"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["op"], f"{r['in']} -> {r['out']}", "x".join(map(str, r["output_size"])),
                      format_count(r["macs"]), format_count(r["params"]))
    table.add_row("total", "", "", "", format_count(total["macs"]), format_count(total["params"]))
    con = Console()
    con.print(table)
    if png is not None:
        con.print(f"wrote {png}", highlight=False)
