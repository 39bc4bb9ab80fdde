"""What a user says of a teacher: :class:`TeacherSpec`, plain data that every command takes, records in its
run's ``config.yaml`` and reads back on ``--resume``.

``source`` is anything :func:`agd.teachers.load_teacher` reads (a name, a checkpoint, ncnn ``.param``,
``module:factory``, ``.pt2``); None means the default teacher (or, on ``--resume``, the recorded one). ``task``, ``scale`` and ``value_range`` are the user's word: None means
"find out" (the file's layout for checkpoints, one probe forward for modules); given, they are checked
against what agd finds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from agd.io import AgdError

DEFAULT_SOURCE = "realesrgan-x4plus"
UNIT_RANGE = (0.0, 1.0)
SIGNED_RANGE = (-1.0, 1.0)


def parse_range(text: str | tuple | list | None, what: str = "--teacher-range") -> tuple[float, float] | None:
    """``"-1,1"`` (or a pair) → (-1.0, 1.0); None stays None. The low end must be below the high end."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise AgdError(f"{what} {text!r}: expected two numbers LOW,HIGH, e.g. 0,1 or -1,1") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise AgdError(f"{what} {text!r}: LOW must be below HIGH and both finite")
    return (lo, hi)


def format_range(r: tuple[float, float]) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"


@dataclass(frozen=True)
class TeacherSpec:
    source: str | None = None
    task: str | None = None
    scale: int | None = None
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.value_range is not None:
            object.__setattr__(self, "value_range", parse_range(self.value_range, "teacher value range"))
        if self.scale is not None and (not isinstance(self.scale, int) or self.scale < 1):
            raise AgdError(f"--scale {self.scale!r}: must be a positive integer")

    @classmethod
    def of(cls, spec: "TeacherSpec | str | os.PathLike | None") -> "TeacherSpec":
        """A spec from a spec or a bare source string (or path)."""
        if isinstance(spec, TeacherSpec):
            return spec
        if spec is None:
            return cls()

        return cls(source=os.fspath(spec))

    @property
    def resolved_source(self) -> str:
        return self.source or DEFAULT_SOURCE

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.resolved_source, "task": self.task, "scale": self.scale,
                "value_range": list(self.value_range) if self.value_range else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> "TeacherSpec":
        if isinstance(d, str):
            return cls(source=d)
        return cls(source=d["source"], task=d.get("task"), scale=d.get("scale"), value_range=d.get("value_range"))

    def __str__(self) -> str:
        extra = [f"task {self.task}" if self.task else "", f"x{self.scale}" if self.scale else "",
                 f"range {format_range(self.value_range)}" if self.value_range else ""]
        extra = [e for e in extra if e]
        return self.resolved_source + (f" ({', '.join(extra)})" if extra else "")


def resolve_on_resume(given: TeacherSpec | None, saved: dict[str, Any] | str | None, run: str) -> TeacherSpec:
    """The teacher of a resumed run: the one its config.yaml records. A teacher given again must be the same
    one (the same source, and no task, scale or range that contradicts the recorded ones)."""
    if saved is None:
        if given is None:
            raise AgdError(f"--resume {run}: its config.yaml records no teacher; give --teacher")
        return given
    rec = TeacherSpec.from_dict(saved)
    if given is None:
        return rec
    for field in ("source", "task", "scale", "value_range"):
        g, r = getattr(given, field), getattr(rec, field)
        if g is None or (field != "source" and r is None):
            continue  # the original run found it out; the loader checks the value against what it finds
        if g is not None and g != r:
            raise AgdError(f"--resume {run}: the run was made with teacher {rec}, not {given}")
    return rec
