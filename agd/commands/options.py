"""What several commands share: option help texts, the teacher options, size and database arguments, and the
one place the command line imports :mod:`agd.tuning`'s TVM-bound modules."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Callable, Optional

import typer

from agd.io import AgdError
from agd.teachers import TeacherSpec, parse_range

TEACHER_HELP = ("A named teacher (agd teachers list), a checkpoint, module:factory or a .pt2 file "
                "(default realesrgan-x4plus; on --resume the run's own).")
TASK_HELP = "The teacher's task, sr or translation (default: found by one probe forward; given, checked against it)."
SCALE_HELP = "The teacher's SR scale (default: found by the probe; given, checked against it)."
RANGE_HELP = ("The value range the teacher's images are in, LOW,HIGH: 0,1 (the default for modules agd probes) "
              "or -1,1 (CycleGAN-style); a module's value_range attribute says it too.")
IMAGES_HELP = "Folder of training images (default: the built-in sample images)."
DEVICE_HELP = "torch device."
VGG_HELP = "torchvision VGG16/VGG19 state dict for perceptual losses."
JSON_HELP = "Print machine-readable JSON."
SIZE_HELP = "Input HxW (default: the space's reference size)."
DATABASE_HELP = "Tuning database (default tvm-db/<target>)."

# options several commands declare alike: ``device: Device = "cpu"`` etc.
Device = Annotated[str, typer.Option(help=DEVICE_HELP)]
VggWeights = Annotated[Optional[Path], typer.Option(help=VGG_HELP)]
Images = Annotated[Optional[Path], typer.Option(help=IMAGES_HELP)]
Size = Annotated[Optional[str], typer.Option(help=SIZE_HELP)]
Database = Annotated[Optional[Path], typer.Option(help=DATABASE_HELP)]
AsJson = Annotated[bool, typer.Option("--json", help=JSON_HELP)]

_KW = inspect.Parameter.KEYWORD_ONLY
# --teacher, --task, --scale, --teacher-range, in this order wherever a command takes a teacher
_TEACHER_PARAMS = (
    inspect.Parameter("teacher", _KW, default=typer.Option(None, help=TEACHER_HELP), annotation=Optional[str]),
    inspect.Parameter("task", _KW, default=typer.Option(None, help=TASK_HELP), annotation=Optional[str]),
    inspect.Parameter("scale", _KW, default=typer.Option(None, min=1, help=SCALE_HELP), annotation=Optional[int]),
    inspect.Parameter("teacher_range", _KW, default=typer.Option(None, "--teacher-range", help=RANGE_HELP),
                      annotation=Optional[str]),
)


def teacher_spec(teacher: Optional[str], task: Optional[str], scale: Optional[int], teacher_range: Optional[str]):
    """The command line's word on the teacher, or None when it says nothing (the default teacher, or on
    --resume the run's)."""
    if teacher is None and task is None and scale is None and teacher_range is None:
        return None
    return TeacherSpec(teacher, task, scale, parse_range(teacher_range))


def with_teacher_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The command ``fn`` with its ``spec`` parameter shown as the four teacher options; ``fn`` receives
    them as one :class:`TeacherSpec` (None when none is given)."""
    sig = inspect.signature(fn, eval_str=True)
    params: list[inspect.Parameter] = []
    for p in sig.parameters.values():
        params += _TEACHER_PARAMS if p.name == "spec" else (p.replace(kind=_KW),)

    @functools.wraps(fn)
    def command(*, teacher=None, task=None, scale=None, teacher_range=None, **kwargs) -> None:
        return fn(spec=teacher_spec(teacher, task, scale, teacher_range), **kwargs)

    # what typer reads the options from (annotations resolved: typer also asks typing.get_type_hints)
    command.__signature__ = sig.replace(parameters=params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__
    return command


def parse_size(size: Optional[str], option: str = "--size") -> Optional[tuple[int, int]]:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise AgdError(f"{option} {size!r}: expected HxW, e.g. 256x256") from None
    return h, w


def default_database(target: str) -> Path:
    """``tvm-db/<target>`` in the working folder: one persistent MetaSchedule database per target."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in target)
    return Path("tvm-db") / slug


def echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def stdout_to_stderr(active: bool):
    """With --json, stdout carries the JSON alone: MetaSchedule's tuning log, whose console handler it
    binds to the current sys.stdout when tuning starts, goes to stderr instead."""
    return contextlib.redirect_stdout(sys.stderr) if active else contextlib.nullcontext()


def tvm_bound(module: str) -> ModuleType:
    """``module``, imported when a command first needs it: the one place the command line imports the modules
    that import TVM, an optional dependency (:mod:`agd.tuning.artifact`, ``.compare``, ``.latency_table`` and
    :mod:`agd.bench.deploy`, through :mod:`agd.tuning.tvm_env`): 10-30 s on a small machine, which ``agd --help``
    and every command that compiles nothing must not pay, nor fail for where TVM is not installed."""
    return importlib.import_module(module)
