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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agd.arch import Genotype, derive
from agd.io import AgdError, atomic_write_json, load_checkpoint, sha256_file, unwrap_state_dict
from agd.machine import require_precision
from agd.metrics.image_quality import output_psnr
from agd.timing import Summary, interleaved_times_ms
from agd.tuning import DEFAULT_TRIALS  # noqa: F401  (re-exported beside CompileConfig: agd compile's default budget)
from agd.tuning.build import build, export_library
from agd.tuning.calibration import input_range
from agd.tuning.export import genotype_layer_names, to_relax
from agd.tuning.int8 import compile_int8
from agd.tuning.measure import CompiledModel, TimingConfig, rpc_runner, rpc_session
from agd.tuning.rewrite import REWRITES
from agd.tuning.targets import TargetSpec, resolve_target
from agd.tuning.tune import TuneConfig, database_digest, database_records, tune
from agd.tuning.tvm_env import tvm

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
    precision: str = "fp32"  # fp32 or int8 (agd.machine.PRECISIONS; bf16 is refused with the reason)
    calibration: tuple[torch.Tensor, ...] = ()  # int8: network inputs (1 x C x H x W in [-1, 1]) to calibrate on
    quality_inputs: tuple[torch.Tensor, ...] = ()  # int8: held-out inputs the quality check runs on
    teacher: Any = None  # int8: network input -> teacher output in the network's range, for the drop check
    max_drop_db: float = 0.2  # int8: largest PSNR-to-teacher drop against the fp32 student accepted
    min_psnr_db: float = 40.0  # int8 without a teacher: least PSNR of the build to the fp32 student
    compare_eager: bool = True  # time eager PyTorch beside the build (local targets)
    input_range: tuple[float, float] = (-1.0, 1.0)  # of the check input (an SR network's is [0, 1])


def load_generator(genotype: Any, weights: Path | None, seed: int = 0) -> torch.nn.Module:
    """The derived generator with the given weights (strict) or a seeded random init."""
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
    if spec.runs_on_this_cpu:  # elsewhere the target's own instructions decide (agd.tuning.int8.scheme_for)
        require_precision(config.precision)
    gen = torch.Generator().manual_seed(config.seed)
    lo, hi = config.input_range
    x = torch.rand(input_shape, generator=gen) * (hi - lo) + lo
    if config.precision == "bf16":
        raise AgdError("--precision bf16: agd's TVM builds are fp32 or int8: TVM 0.27 has no tensor intrinsic for "
                       "AVX512-BF16 (vdpbf16ps) or AMX-BF16, so a bf16 build would convert to fp32 and multiply "
                       "there, slower than fp32 (`agd bench deploy` lists torch's bf16 rows)")
    if config.precision == "int8":
        return _compile_int8(model, spec, x, config)
    prog = to_relax(model, x, layer_names)
    session = device_for(spec, "running the numerical check")
    report = None
    if config.trials > 0:
        if config.database is None:
            raise AgdError("tuning (--trials > 0) needs a database folder")
        runner = rpc_runner(spec) if spec.rpc is not None else None
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
            "tuned": use_db, "emulated": config.emulated, "params": prog.params,
            "output_shape": list(prog.output_shape), "precision": "fp32", "quality": None,
            "vs_eager": _vs_eager(model, cm, x, spec, config)}


def _vs_eager(model: torch.nn.Module, cm: CompiledModel, x: torch.Tensor, spec: TargetSpec,
              config: CompileConfig) -> dict[str, Any]:
    """The build against eager PyTorch on this machine, timed interleaved in one process (wall clock,
    input already on the device): so an artifact slower than what the user has is never written silently.
    Remote and cross-compiled targets cannot run eager PyTorch here: said so."""
    if not config.compare_eager:
        return {"compared": False, "why": "not asked (compare_eager=False)"}
    if spec.rpc is not None or spec.cross_compiler is not None:
        return {"compared": False, "why": f"target {spec.name} runs on another device: eager PyTorch is not timed there"}
    if spec.tvm_target.get("kind") != "llvm":
        return {"compared": False, "why": f"target {spec.name}: `agd latency measure --target {spec.name}` times "
                                          "eager PyTorch on that device beside TVM"}
    def eager() -> None:
        with torch.no_grad():
            model(x)

    t = interleaved_times_ms({"eager": eager, "tvm": cm.bind(x.numpy())}, reps=max(5, config.timing.repeat), warmup=2)
    e, v = Summary.of(t["eager"]).median_ms, Summary.of(t["tvm"]).median_ms
    return {"compared": True, "eager_ms": e, "tvm_ms": v, "speedup": e / v, "slower_than_eager": v > e,
            "threads": torch.get_num_threads(), "method": f"interleaved wall clock, median of {len(t['tvm'])} calls each"}


def quality_check(fp32: Any, build: Any, inputs: tuple[torch.Tensor, ...], teacher: Any, max_drop_db: float,
                  min_psnr_db: float, data_range: float = 2.0) -> dict[str, Any]:
    """A low-precision build against the fp32 student on held-out inputs. With a teacher: each one's mean
    PSNR to the teacher's output and the drop, which must stay within ``max_drop_db``; without one, the
    build's PSNR to the fp32 output, which must reach ``min_psnr_db`` (at 40 dB the drop stays within
    0.2 dB for a student within 26.7 dB of its teacher: 10 log10(1 + 10^((P - Q) / 10)) <= 0.2). The report
    says which; ``ok`` False is refused by the caller with the figure. ``data_range``: the outputs'
    peak-to-peak range (2 for translation's [-1, 1], 1 for SR's [0, 1])."""
    if not inputs:
        raise AgdError("quality check: no held-out images to check the low-precision build on")
    to_fp32, to_t32, to_tq = [], [], []
    for x in inputs:
        with torch.no_grad():
            ref = fp32(x).numpy()
        got = build(x.numpy())
        to_fp32.append(output_psnr(got, ref, data_range))
        if teacher is not None:
            t = np.asarray(teacher(x), np.float64)
            to_t32.append(output_psnr(ref, t, data_range))
            to_tq.append(output_psnr(got, t, data_range))
    rep: dict[str, Any] = {"images": len(inputs), "psnr_to_fp32_db": float(np.mean(to_fp32))}
    if teacher is not None:
        rep.update(psnr_to_teacher_fp32_db=float(np.mean(to_t32)), psnr_to_teacher_db=float(np.mean(to_tq)))
        rep["drop_db"] = rep["psnr_to_teacher_fp32_db"] - rep["psnr_to_teacher_db"]
        rep.update(rule=f"PSNR-to-teacher drop <= {max_drop_db} dB", ok=rep["drop_db"] <= max_drop_db)
    else:
        rep.update(rule=f"PSNR to the fp32 student >= {min_psnr_db} dB (no teacher given)",
                   ok=rep["psnr_to_fp32_db"] >= min_psnr_db)
    return rep


def _compile_int8(model: torch.nn.Module, spec: TargetSpec, x: torch.Tensor, config: CompileConfig) -> dict[str, Any]:
    """int8 post-training quantization (:mod:`agd.tuning.int8`: u8 x s8 on x86 VNNI, s8 x s8 on aarch64
    sdot), the quality check on
    held-out inputs (refused with the figure when it fails), timing, and the comparison with eager."""
    if not config.calibration:
        raise AgdError("--precision int8: no calibration images (give --calibration DIR, or 'builtin' for agd's "
                       "built-in training samples)")
    # x86: VNNI kernels for this machine; aarch64 (an rpc:// device): sdot kernels, fixed schedule, run there
    b = compile_int8(model, x, list(config.calibration), spec, database=config.database, trials=config.trials)
    cm = b.run
    q = quality_check(model, cm, config.quality_inputs or (x,), config.teacher, config.max_drop_db, config.min_psnr_db,
                      config.input_range[1] - config.input_range[0])
    if not q["ok"]:
        fig = (f"PSNR to the teacher drops {q['drop_db']:.2f} dB" if "drop_db" in q
               else f"PSNR to the fp32 student {q['psnr_to_fp32_db']:.1f} dB")
        raise AgdError(f"--precision int8: the quantized build breaks the quality bar ({fig} on {q['images']} held-out "
                       f"images; rule: {q['rule']}); no artifact written")
    with torch.no_grad():
        ref = model(x).numpy()
    err = float(np.abs(cm(x.numpy()).astype(np.float64) - ref).max())
    return {"executable": b.executable, "program": None, "params": b.params, "max_abs_error": err,
            "latency": cm.time_ms(x.numpy(), config.timing), "tune_report": b.tune_report,
            "tuned": b.tune_report is not None, "emulated": config.emulated, "output_shape": list(ref.shape),
            "precision": "int8", "quality": q, "int8": b.note, "built_target": b.spec.tvm_target,
            "vs_eager": _vs_eager(model, cm, x, spec, config)}


def compile_genotype(genotype_path: Path, spec: TargetSpec, output: Path, config: CompileConfig,
                     weights: Path | None = None) -> dict[str, Any]:
    """``agd compile``: build, check and time a derived generator, then write its artifact folder."""
    g = Genotype.load(genotype_path)
    model = load_generator(g, weights, config.seed)
    h, w = config.size or g.config.reference_size
    shape = (config.batch, g.config.in_ch, h, w)
    config = replace(config, input_range=input_range(g.config.scale))
    res = compile_model(model, spec, shape, config, genotype_layer_names(g))
    manifest = {
        "format": MANIFEST, "version": 1,
        "genotype": g.to_dict(),
        "weights": {"path": str(weights), "sha256": sha256_file(weights)} if weights is not None
        else {"path": None, "note": f"no weights given: seeded random init (torch.manual_seed({config.seed})), "
                                    "for latency work only"},
        "target": {"name": spec.name, "tvm_target": res.get("built_target", spec.tvm_target), "host": spec.host,
                   "cross_compiler": spec.cross_compiler, "notes": spec.notes},
        "input_shape": list(shape), "output_shape": res["output_shape"],
        "precision": res["precision"], "quality": res["quality"], "int8": res.get("int8"),
        "vs_eager": res["vs_eager"],
        "input_range": list(config.input_range),
        "export_rewrites": list(REWRITES),
        "tuning": {"trials_requested": config.trials, "tuned": res["tuned"],
                   "database": str(config.database) if config.database else None,
                   "database_digest": database_digest(config.database) if res["tuned"] else None,
                   "database_records": database_records(config.database) if config.database else 0,
                   "report": asdict(res["tune_report"]) if res["tune_report"] else None},
        "latency_ms": res["latency"]["median_ms"], "latency": res["latency"],
        "latency_emulated": res["emulated"],
        "max_abs_error": res["max_abs_error"], "atol": config.atol if res["precision"] == "fp32" else None,
        "versions": {"tvm": tvm.__version__, "torch": torch.__version__},
        "files": {"library": "model.so", "params": "params.bin"},
    }
    _write_artifact(output, res["executable"], res["params"], spec, manifest)
    return manifest


def _write_artifact(output: Path, ex: Any, params: list[Any], spec: TargetSpec, manifest: dict[str, Any]) -> None:
    """Write into a temporary sibling folder, then move it into place (replacing an older artifact)."""
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
    spec = resolve_target(manifest["target"]["name"]) if manifest["target"]["name"] in ("x86", "cuda") else None
    if spec is None:
        raise AgdError(f"artifact {path}: built for {manifest['target']['name']}; load it on that device")
    return manifest, CompiledModel(lib, params, spec)
