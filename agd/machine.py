"""This machine's CPU: its model, the vector extensions agd's precisions need, and whether each precision
has instructions to run on here.

The project's machines differ (AMD Zen 5 with AVX-512, VNNI and AVX512-BF16 but no AMX; Intel Xeons with
AMX as well), so every latency figure is recorded beside :func:`cpu_summary` and compared only within one
run on one machine. Read from ``/proc/cpuinfo`` once per process; nothing runs at import time.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from agd.io import AgdError

PRECISIONS = ("fp32", "bf16", "int8")

# cpuinfo flag -> how BENCHMARKS.md and the errors name it
EXTENSIONS = {
    "avx2": "AVX2", "avx512f": "AVX-512F", "avx512bw": "AVX-512BW", "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX512-BF16", "avx512_fp16": "AVX512-FP16",
    "amx_tile": "AMX-TILE", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
}
# what each low precision runs fast on (any one is enough)
NEEDS = {"bf16": ("avx512_bf16", "amx_bf16"), "int8": ("avx512_vnni", "avx_vnni", "amx_int8")}


@dataclass(frozen=True)
class Cpu:
    model: str
    flags: frozenset[str]
    logical_cores: int

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def extensions(self) -> list[str]:
        """The extensions of :data:`EXTENSIONS` this CPU has, by their names (AVX2, AVX-512F, ...)."""
        return [name for flag, name in EXTENSIONS.items() if flag in self.flags]


@functools.lru_cache(maxsize=1)
def cpu() -> Cpu:
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:  # not Linux: the model from platform, no flags known
        pass
    return Cpu(model or platform.processor() or platform.machine(), flags, os.cpu_count() or 1)


def cpu_summary() -> str:
    """``AMD EPYC, 2 logical cores, AVX2 AVX-512F ... AVX512-BF16, no AMX``: what a figure is recorded beside."""
    c = cpu()
    amx = "" if c.has("amx_tile") else ", no AMX"
    return f"{c.model}, {c.logical_cores} logical cores, {' '.join(c.extensions()) or 'no AVX2/AVX-512 flags seen'}{amx}"


def precision_reason(precision: str, machine: Cpu | None = None) -> str | None:
    """Why ``precision`` has no instructions on this CPU (None: it has them). fp32 always runs."""
    if precision not in PRECISIONS:
        raise AgdError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    c = machine or cpu()
    if precision == "fp32":
        return None
    if any(c.has(f) for f in NEEDS[precision]):
        return None
    want = " or ".join(EXTENSIONS[f] for f in NEEDS[precision])
    return f"this CPU ({c.model}) has no {want}"


def precision_instructions(precision: str, machine: Cpu | None = None) -> str:
    """The instructions ``precision`` runs on here, e.g. ``AVX512-VNNI`` for int8 on Zen 5."""
    c = machine or cpu()
    if precision == "fp32":
        return "AVX-512F FMA" if c.has("avx512f") else ("AVX2 FMA" if c.has("avx2") else "scalar/SSE")
    return " + ".join(EXTENSIONS[f] for f in NEEDS[precision] if c.has(f)) or "none"


def require_precision(precision: str, what: str = "--precision") -> None:
    """AgdError naming the missing extension when ``precision`` cannot run fast here."""
    why = precision_reason(precision)
    if why:
        raise AgdError(f"{what} {precision}: {why}; use fp32"
                       + (" or int8" if precision == "bf16" and precision_reason("int8") is None else ""))
