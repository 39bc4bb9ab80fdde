"""Relax → executable: untuned builds (TVM's default schedules; dlight rules on GPU, which TVM's
default pipeline applies for GPU targets) and tuned builds from a MetaSchedule database."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agd.io import AgdError
from agd.tuning.targets import TargetSpec
from agd.tuning.tvm_env import cc, relax, transform, tvm


def tvm_target(spec: TargetSpec):
    """The ``tvm.target.Target`` of a spec; AgdError explaining the valid forms if TVM rejects it."""
    try:
        if spec.host is not None:
            return tvm.target.Target(spec.tvm_target, host=spec.host)
        return tvm.target.Target(spec.tvm_target)
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise AgdError(f"target {spec.name}: TVM rejects {spec.tvm_target} ({first}); valid forms: x86, arm64, "
                       "cuda, rpc://HOST:PORT/KEY, or a TVM target JSON dict such as "
                       '{"kind": "llvm", "mcpu": "znver3"}') from None


def fused_module(mod: Any, target: Any) -> Any:
    """The module as MetaSchedule sees it: decomposed for inference, legalized and fused (the first half
    of TVM's ``static_shape_tuning`` pipeline)."""
    with target:
        return transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
        ])(mod)


def build(mod: Any, spec: TargetSpec, database_dir: str | Path | None = None) -> Any:
    """Compile a Relax module for ``spec``: with the tuned schedules of ``database_dir`` when given
    (workloads without a record keep the default schedule), else untuned."""
    target = tvm_target(spec)
    try:
        if database_dir is None:
            return tvm.compile(mod, target=target)
        fused = fused_module(mod, target)
        with target, tvm.transform.PassContext(opt_level=3):
            tuned = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(fused)
        return tvm.compile(tuned, target=target)
    except AgdError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise AgdError(f"TVM build for target {spec.name} failed: {first}") from None


def export_library(ex: Any, spec: TargetSpec, path: str | Path) -> Path:
    """Write the compiled library, cross-compiling for a foreign architecture."""
    path = Path(path)
    if spec.cross_compiler is not None:
        if shutil.which(spec.cross_compiler) is None:
            raise AgdError(f"target {spec.name}: cross compiler {spec.cross_compiler} not found "
                           "(apt-get install g++-aarch64-linux-gnu)")
        ex.export_library(str(path), fcompile=cc.cross_compiler(spec.cross_compiler))
    else:
        ex.export_library(str(path))
    return path
