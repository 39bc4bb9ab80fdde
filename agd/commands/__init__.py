"""The command line, one module per command group: each declares its own typer ``app`` (unnamed: top-level
commands; named: a group), :mod:`agd.cli` assembles them. They parse arguments and print; the work is in
:mod:`agd.jobs` and the library."""
