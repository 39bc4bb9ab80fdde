"""Deployable artifacts: derived generator (genotype + weights) → tuned TVM build → library, parameters
and a manifest, written only after the build's output matches PyTorch's.

Artifact folder::

    model.so        the compiled library (export_library; cross-compiled for arm64)
    params.bin      the parameters in TVM's param-dict format, keys p0, p1, ... in ``main``'s order
    manifest.json   genotype, target, input shape, tuning database digest, latency, max abs error
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agd.io import AgdError, atomic_write_json, load_checkpoint, unwrap_state_dict
from agd.tuning.build import build, export_library
from agd.tuning.export import genotype_layer_names, to_relax
from agd.tuning.rewrite import REWRITES
from agd.tuning.measure import CompiledModel, TimingConfig, rpc_session
from agd.tuning.targets import TargetSpec
from agd.tuning.tune import TuneConfig, database_digest, database_records, tune

MANIFEST = "agd-tvm-artifact"


@dataclass(frozen=True)
class CompileConfig:
    size: tuple[int, int] | None = None  # input H x W (the space's reference size by default)
    batch: int = 1
    trials: int = 0  # 0: untuned (default schedules, or the database's if it has records for this net)
    database: Path | None = None  # persistent MetaSchedule database for this target
    atol: float = 1e-4  # numerical check: max |TVM - PyTorch| allowed
    seed: int = 0  # random init (no weights) and the check input
    emulated: bool = False  # the device is emulated (qemu): its timings say nothing about real speed
    timing: TimingConfig = field(default_factory=TimingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def load_generator(genotype: Any, weights: Path | None, seed: int = 0) -> torch.nn.Module:
    """The derived generator with the given weights (strict) or a seeded random init."""
    from agd.space import derive

    torch.manual_seed(seed)
    model = derive(genotype).eval()
    if weights is not None:
        sd = unwrap_state_dict(load_checkpoint(weights), weights)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            line = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
            raise AgdError(f"weights {weights}: do not fit this genotype ({line[:300]})") from None
    return model


def device_for(spec: TargetSpec, what: str) -> Any:
    """An RPC session for rpc:// targets, None to run here; AgdError when the target cannot run here."""
    if spec.rpc is not None:
        return rpc_session(spec)
    if spec.cross_compiler is not None:
        raise AgdError(f"target {spec.name}: {what} needs an aarch64 device; give it as rpc://HOST:PORT/KEY "
                       "(a TVM RPC tracker with that device registered)")
    return None


def compile_model(model: torch.nn.Module, spec: TargetSpec, input_shape: tuple[int, ...], config: CompileConfig,
                  layer_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Convert, optionally tune, build, check against PyTorch and time ``model``; returns the pieces (no files)."""
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.rand(input_shape, generator=gen) * 2 - 1
    prog = to_relax(model, x, layer_names)
    session = device_for(spec, "running the numerical check")
    report = None
    if config.trials > 0:
        if config.database is None:
            raise AgdError("tuning (--trials > 0) needs a database folder")
        runner = None
        if spec.rpc is not None:
            from agd.tuning.measure import rpc_runner

            runner = rpc_runner(spec)
        report = tune(prog.mod, spec, config.database, TuneConfig(**{**asdict(config.tune), "trials": config.trials}),
                      runner=runner)
    use_db = config.database is not None and database_records(config.database) > 0
    ex = build(prog.mod, spec, config.database if use_db else None)
    cm = CompiledModel(ex, prog.params, spec, session=session)
    with torch.no_grad():
        ref = model(x).numpy()
    got = cm(x.numpy())
    if got.shape != ref.shape:
        raise AgdError(f"numerical check failed: TVM output shape {got.shape}, PyTorch {ref.shape}")
    err = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    if not np.isfinite(err) or err > config.atol:
        raise AgdError(f"numerical check failed on target {spec.name}: max |TVM - PyTorch| = {err:.3g} > {config.atol:g}; "
                       "no artifact written")
    timing = cm.time_ms(x.numpy(), config.timing)
    return {"executable": ex, "program": prog, "max_abs_error": err, "latency": timing, "tune_report": report,
            "tuned": use_db, "emulated": config.emulated}


def compile_genotype(genotype_path: Path, spec: TargetSpec, output: Path, config: CompileConfig,
                     weights: Path | None = None) -> dict[str, Any]:
    """``agd compile``: build, check and time a derived generator, then write its artifact folder."""
    from agd.space import Genotype

    g = Genotype.load(genotype_path)
    model = load_generator(g, weights, config.seed)
    h, w = config.size or g.config.reference_size
    shape = (config.batch, g.config.in_ch, h, w)
    res = compile_model(model, spec, shape, config, genotype_layer_names(g))
    import tvm

    manifest = {
        "format": MANIFEST, "version": 1,
        "genotype": g.to_dict(),
        "weights": {"path": str(weights), "sha256": _sha(weights)} if weights is not None
        else {"path": None, "note": f"no weights given: seeded random init (torch.manual_seed({config.seed})), "
                                    "for latency work only"},
        "target": {"name": spec.name, "tvm_target": spec.tvm_target, "host": spec.host,
                   "cross_compiler": spec.cross_compiler, "notes": spec.notes},
        "input_shape": list(shape), "output_shape": list(res["program"].output_shape),
        "input_range": [-1.0, 1.0],
        "export_rewrites": list(REWRITES),
        "tuning": {"trials_requested": config.trials, "tuned": res["tuned"],
                   "database": str(config.database) if config.database else None,
                   "database_digest": database_digest(config.database) if res["tuned"] else None,
                   "database_records": database_records(config.database) if config.database else 0,
                   "report": asdict(res["tune_report"]) if res["tune_report"] else None},
        "latency_ms": res["latency"]["median_ms"], "latency": res["latency"],
        "latency_emulated": res["emulated"],
        "max_abs_error": res["max_abs_error"], "atol": config.atol,
        "versions": {"tvm": tvm.__version__, "torch": torch.__version__},
        "files": {"library": "model.so", "params": "params.bin"},
    }
    _write_artifact(output, res["executable"], res["program"].params, spec, manifest)
    return manifest


def _sha(p: Path) -> str:
    from agd.io import sha256_file

    return sha256_file(p)


def _write_artifact(output: Path, ex: Any, params: list[Any], spec: TargetSpec, manifest: dict[str, Any]) -> None:
    """Write into a temporary sibling folder, then move it into place (replacing an older artifact)."""
    import tvm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        export_library(ex, spec, tmp / "model.so")
        (tmp / "params.bin").write_bytes(tvm.runtime.save_param_dict({f"p{i}": p for i, p in enumerate(params)}))
        atomic_write_json(tmp / "manifest.json", manifest)
        if output.exists():
            if not (output / "manifest.json").is_file():
                raise AgdError(f"output {output}: exists and is not an agd artifact folder; not replacing it")
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_artifact(path: Path) -> tuple[dict[str, Any], Any]:
    """(manifest, a callable numpy → numpy) for an artifact built for this machine."""
    import tvm

    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise AgdError(f"artifact {path}: no manifest.json")
    manifest = json.loads(mf.read_text())
    if manifest.get("format") != MANIFEST:
        raise AgdError(f"artifact {path}: manifest is not an {MANIFEST} manifest")
    lib = tvm.runtime.load_module(str(path / "model.so"))
    pd = tvm.runtime.load_param_dict((path / "params.bin").read_bytes())
    params = [pd[f"p{i}"] for i in range(len(pd))]
    from agd.tuning.targets import resolve_target

    spec = resolve_target(manifest["target"]["name"]) if manifest["target"]["name"] in ("x86", "cuda") else None
    if spec is None:
        raise AgdError(f"artifact {path}: built for {manifest['target']['name']}; load it on that device")
    return manifest, CompiledModel(lib, params, spec)
