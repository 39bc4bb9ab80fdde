"""``agd info``: versions, and every backend with whether it is usable here and why not."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from agd.backends import all_backends, versions
from agd.commands.options import JSON_HELP

app = typer.Typer()


@app.command("info")
def info(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Versions, and every backend with whether it is usable here and why not."""
    vers = versions()
    backends = all_backends()
    if as_json:
        typer.echo(json.dumps({"versions": vers, "backends": [b.__dict__ for b in backends]}, indent=2))
        return
    con = Console()
    for k, v in vers.items():
        con.print(f"{k + ':':10} {v}", highlight=False)
    table = Table(title="backends", title_justify="left")
    table.add_column("backend")
    table.add_column("status")
    table.add_column("reason")
    for b in backends:
        table.add_row(b.name, "[green]available[/]" if b.available else "[red]unavailable[/]", b.reason)
    con.print(table)
