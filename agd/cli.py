"""The ``agd`` command line.

Every user error (a bad path, an unknown name, a corrupt file) is an :class:`agd.io.AgdError`, printed
as one line on stderr with exit status 2; nothing half-written is left behind (outputs are atomic).

Each module of :mod:`agd.commands` declares its own typer app: an unnamed one holds top-level commands, a
named one is a command group. This module only assembles them, one line each, in the order ``agd --help``
lists them (commands first, then groups).
"""

from __future__ import annotations

import sys

import typer

from agd.commands import apply, arch, bench, demo, info, latency, latency_table, pipeline, space, teachers, tvm
from agd.io import AgdError

app = typer.Typer(
    name="agd",
    help="Compress pretrained image generators: distillation-guided NAS, training, evaluation, TVM compilation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(pipeline.app)  # baseline, search, train, eval, compress
app.add_typer(tvm.app)  # compile
app.add_typer(apply.app)
app.add_typer(info.app)
app.add_typer(demo.app)
app.add_typer(teachers.app)
app.add_typer(space.app)
app.add_typer(arch.app)
app.add_typer(bench.app)
app.add_typer(latency.app)
app.add_typer(latency_table.app)


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
