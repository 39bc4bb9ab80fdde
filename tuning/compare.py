"""Side-by-side latency of one generator on this machine: PyTorch eager, torch.compile, ONNX Runtime,
TVM untuned and TVM tuned, on its CPU (target x86) or its GPU (target cuda). Every backend's output is
checked against eager PyTorch; a backend that is missing or fails is reported with the reason, never
silently dropped. On a GPU each timed call starts from an input already on the device and ends when the
device has finished (synchronized), for every backend alike."""

from __future__ import annotations

import copy
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from agd.io import AgdError
from agd.machine import PRECISIONS, precision_reason
from agd.metrics.image_quality import output_psnr
from agd.numerics import exact_float32
from agd.timing import wall_summary
from agd.tuning.build import build
from agd.tuning.export import to_relax
from agd.tuning.int8 import compile_int8
from agd.tuning.lowp_peers import onnxruntime_modules, ort_int8, pt2e_int8, torch_bf16
from agd.tuning.measure import CompiledModel
from agd.tuning.tune import TuneConfig, database_records, tune

BACKENDS = ("eager", "torch.compile", "onnxruntime", "tvm-untuned", "tvm-tuned")
# every backend of each precision, in table order; a precision's backends are what a user deploying at that
# precision would pick from (agd's own TVM builds last)
PRECISION_BACKENDS = {
    "fp32": BACKENDS,
    "bf16": ("eager-bf16", "torch.compile-bf16", "tvm-bf16"),
    "int8": ("onnxruntime-int8", "pt2e-int8", "tvm-int8", "tvm-int8-tuned"),
}
PRECISION_OF = {b: p for p, bs in PRECISION_BACKENDS.items() for b in bs}
ALL_BACKENDS = tuple(b for bs in PRECISION_BACKENDS.values() for b in bs)


def backends_for(precisions: tuple[str, ...]) -> tuple[str, ...]:
    """The backends of these precisions, in table order (fp32's always first: the reference rows)."""
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise AgdError(f"--precision {bad[0]!r}: expected one of {', '.join(PRECISIONS)}")
    return tuple(b for p in PRECISIONS if p in precisions for b in PRECISION_BACKENDS[p])


@dataclass(frozen=True)
class CompareConfig:
    backends: tuple[str, ...] = BACKENDS
    trials: int = 0  # tvm-tuned: MetaSchedule trials (0: use the database as it is)
    database: Path | None = None
    repeats: int = 10  # timed calls per backend (median reported), after warmup
    warmup: int = 3
    threads: int | None = None  # torch / ORT intra-op threads (None: library default)
    tune_kwargs: dict[str, Any] = field(default_factory=dict)
    # int8 rows: calibration inputs of the measured input's shape ([-1, 1]; not the measured input itself)
    calibration: tuple[torch.Tensor, ...] = ()
    data_range: float = 2.0  # the outputs' peak-to-peak range for PSNR (translation [-1, 1]: 2; SR [0, 1]: 1)


def ort_session(model: torch.nn.Module, x: torch.Tensor, threads: int | None, provider: str = "CPUExecutionProvider"):
    """An ONNX Runtime session of ``model`` exported at ``x`` (TorchScript exporter, opset 17, ORT_ENABLE_ALL)."""
    ort, _ = onnxruntime_modules()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: the dynamo one needs onnxscript, which agd does not pin
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(buf.getvalue(), so, providers=[provider])


def device_of(spec: Any) -> str:
    """The torch device type a target's generator runs on here: "cuda" for a cuda target, else "cpu"."""
    return "cuda" if spec.tvm_target.get("kind") == "cuda" else "cpu"


def _torch_note(device: str) -> str:
    if device != "cuda":
        return ""
    tf32 = torch.backends.cudnn.allow_tf32
    return f"{torch.cuda.get_device_name()}, cuDNN TF32 convolutions {'on' if tf32 else 'off'}"


def compare(model: torch.nn.Module, x: torch.Tensor, spec: Any, config: CompareConfig = CompareConfig(),
            progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per backend: ``{"backend", "ok", "median_ms", "min_ms", "max_abs_error", "note"}``.
    The generator runs where the target's code runs (:func:`device_of`): the CPU, or this machine's GPU."""
    device = device_of(spec)
    if device == "cuda" and not torch.cuda.is_available():
        raise AgdError(f"target {spec.name}: no CUDA device visible to torch {torch.__version__} on this machine "
                       "(build with `agd compile`; measure on a machine with the GPU)")
    model = model.eval()  # stays on the CPU: ONNX and TVM export from it
    on_device = model if device == "cpu" else copy.deepcopy(model).to(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    xd = x.to(device)
    with torch.no_grad(), exact_float32():
        ref = on_device(xd).cpu().numpy().astype(np.float64)
    xn = x.numpy()
    rows: list[dict[str, Any]] = []

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def add(name: str, run: Callable[[], np.ndarray] | None, note: str = "", setup_s: float = 0.0,
            timed: Callable[[], Any] | None = None) -> None:
        """``run`` returns the output (checked), ``timed`` is the call that is timed (default: ``run``)."""
        precision = PRECISION_OF.get(name, "fp32")
        if run is None:
            rows.append({"backend": name, "precision": precision, "ok": False, "note": note})
        else:
            out = np.asarray(run(), dtype=np.float64)
            err = float(np.abs(out - ref).max())
            rows.append({"backend": name, "precision": precision, "ok": True,
                         **wall_summary(timed or run, config.repeats, config.warmup).to_dict(), "max_abs_error": err,
                         "psnr_to_fp32_db": output_psnr(out, ref, config.data_range), "setup_s": setup_s, "note": note})
        if progress:
            r = rows[-1]
            progress(f"{name}: " + (f"{r['median_ms']:.3f} ms" if r["ok"] else f"unavailable ({note})"))

    def torch_rows(fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Callable[[], np.ndarray], Callable[[], Any]]:
        def run():
            with torch.no_grad():
                return fn(xd).cpu().numpy()

        def timed():
            with torch.no_grad():
                y = fn(xd)
            sync()
            return y
        return run, timed

    def peer_rows(name: str, peer: tuple[Callable[[torch.Tensor], torch.Tensor], str], t0: float) -> None:
        fn, note = peer
        run, timed = torch_rows(fn)
        add(name, run, note, time.perf_counter() - t0, timed=timed)

    for name in config.backends:
        t0 = time.perf_counter()
        why = precision_reason(PRECISION_OF[name]) if name in PRECISION_OF else None
        if why:
            add(name, None, why)
            continue
        if PRECISION_OF.get(name) == "int8" and not config.calibration:
            add(name, None, "no calibration images given")
            continue
        if PRECISION_OF.get(name, "fp32") != "fp32" and device != "cpu":
            add(name, None, f"low-precision rows run on the CPU (target {spec.name})")
            continue
        try:
            if name in ("eager-bf16", "torch.compile-bf16"):
                peer_rows(name, torch_bf16(model, x, compiled=name == "torch.compile-bf16"), t0)
            elif name == "tvm-bf16":
                add(name, None, "TVM 0.27 has no tensor intrinsic for AVX512-BF16 (vdpbf16ps) or AMX-BF16: a bf16 "
                                "build converts to fp32 to multiply, so agd builds fp32 and int8 only")
            elif name == "pt2e-int8":
                peer_rows(name, pt2e_int8(model, x, list(config.calibration)), t0)
            elif name == "onnxruntime-int8":
                peer_rows(name, ort_int8(model, x, list(config.calibration), config.threads), t0)
            elif name in ("tvm-int8", "tvm-int8-tuned"):
                tuned = name == "tvm-int8-tuned"
                if tuned and (config.database is None or config.trials <= 0):
                    add(name, None, "needs --trials > 0 and a database (tvm-int8 is the untuned, fixed VNNI schedule)")
                    continue
                b = compile_int8(model, x, list(config.calibration), spec, database=config.database if tuned else None,
                                 trials=config.trials if tuned else 0)
                cmod = CompiledModel(b.executable, b.params, spec)
                add(name, lambda: cmod(xn), b.note, time.perf_counter() - t0, timed=cmod.bind(xn))
            elif name == "eager":
                run, timed = torch_rows(on_device)
                add(name, run, _torch_note(device), timed=timed)
            elif name == "torch.compile":
                cm = torch.compile(on_device)
                with torch.no_grad():
                    cm(xd)  # compile outside the timing
                sync()
                run, timed = torch_rows(cm)
                note = ", ".join(n for n in ("inductor, default mode", _torch_note(device)) if n)
                add(name, run, note, time.perf_counter() - t0, timed=timed)
            elif name == "onnxruntime":
                ort, _ = onnxruntime_modules()
                provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
                if provider not in ort.get_available_providers():
                    add(name, None, f"onnxruntime {ort.__version__} has no {provider} here")
                    continue
                sess = ort_session(model, x, config.threads, provider)
                copies = " (host input and output: copies timed)" if device == "cuda" else ""
                add(name, lambda: sess.run(None, {"x": xn})[0],
                    f"onnxruntime {ort.__version__}, {provider}, ORT_ENABLE_ALL{copies}", time.perf_counter() - t0)
            elif name in ("tvm-untuned", "tvm-tuned"):
                prog = to_relax(model, x)
                note = ""
                db = None
                if name == "tvm-tuned":
                    if config.database is None:
                        add(name, None, "no tuning database given (--database)")
                        continue
                    if config.trials > 0:
                        rep = tune(prog.mod, spec, config.database, TuneConfig(trials=config.trials, **config.tune_kwargs))
                        note = (f"{config.trials} trials requested, {rep.tasks} tasks ({rep.tasks_reused} reused), "
                                f"tuned in {rep.seconds:.0f} s; ")
                        if rep.tasks_unscheduled:
                            note += f"{rep.tasks_unscheduled} tasks without a measured schedule (TVM defaults); "
                    if database_records(config.database) == 0:
                        add(name, None, note + f"database {config.database} holds no records")
                        continue
                    db = config.database
                    note += f"database {db} ({database_records(db)} records)"
                elif device == "cuda":
                    note = "TVM default GPU schedules (dlight)"
                ex = build(prog.mod, spec, db)
                cmod = CompiledModel(ex, prog.params, spec)
                add(name, lambda: cmod(xn), note, time.perf_counter() - t0, timed=cmod.bind(xn))
            else:
                add(name, None, f"unknown backend (known: {', '.join(ALL_BACKENDS)})")
        except ImportError as e:
            add(name, None, f"not installed ({e.name})")
        except Exception as e:  # report, keep comparing the others
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            add(name, None, f"failed: {first[:200]}")
    return rows
