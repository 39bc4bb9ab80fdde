"""agd.tuning: TVM compile (x86 real, arm64 cross-compiled, CUDA codegen only), numerical check before
any artifact, latency tables, side-by-side latency, bad input (unsupported operator, invalid target,
unreachable RPC tracker, killed tuning). Tiny networks and very few trials keep this file fast; real
tuning runs are in tests/benchmarks/test_bench_deploy.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tvm", reason="apache-tvm is not installed")

from agd.arch import random_genotype  # noqa: E402
from agd.io import AgdError  # noqa: E402
from agd.search.supernet import Supernet
from agd.space import SearchSpace, get_config  # noqa: E402
from agd.tuning.artifact import CompileConfig, compile_genotype, compile_model, load_artifact  # noqa: E402
from agd.tuning.targets import TargetSpec, resolve_target  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def x86():
    return resolve_target("x86")


def _genotype(tmp_path: Path, preset: str = "translation-tiny", seed: int = 1) -> Path:
    g = random_genotype(SearchSpace(get_config(preset)), random.Random(seed))
    return g.save(tmp_path / f"{preset}.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ targets
def test_unknown_target_lists_valid_forms():
    with pytest.raises(AgdError, match=r"x86, arm64, cuda or rpc://HOST:PORT/KEY"):
        resolve_target("riscv")
    with pytest.raises(AgdError, match="expected rpc://HOST:PORT/KEY"):
        resolve_target("rpc://nohostport")


def test_target_tvm_rejects_is_explained():
    from agd.tuning.build import tvm_target

    with pytest.raises(AgdError, match="TVM rejects .*valid forms: x86, arm64, cuda, rpc://"):
        tvm_target(TargetSpec("bogus", {"kind": "no-such-kind"}))


def test_cuda_target_carries_the_limits_gpu_schedules_read(monkeypatch):
    """MetaSchedule's GPU rules and dlight read shared memory, registers and L2 off the target: a local
    GPU's own figures when its arch is the one asked for, else an H100's."""
    from agd.tuning import targets
    from agd.tuning.build import tvm_target

    monkeypatch.setattr(targets, "_local_cuda_limits", lambda: None)
    spec = resolve_target("cuda", cuda_arch="sm_90")
    assert spec.tvm_target["arch"] == "sm_90" and spec.notes["limits"].startswith("Hopper defaults")
    for key, value in targets.CUDA_DEFAULT_LIMITS.items():
        assert spec.tvm_target[key] == value
    local = dict(targets.CUDA_DEFAULT_LIMITS, arch="sm_89", max_shared_memory_per_block=101376,
                 l2_cache_size_bytes=75497472)
    monkeypatch.setattr(targets, "_local_cuda_limits", lambda: local)
    spec = resolve_target("cuda")
    assert spec.tvm_target["arch"] == "sm_89" and spec.tvm_target["max_shared_memory_per_block"] == 101376
    assert spec.notes["limits"] == "read off the local GPU"
    assert resolve_target("cuda", cuda_arch="sm_90").tvm_target["l2_cache_size_bytes"] == 52428800
    t = tvm_target(spec)  # TVM accepts every key
    assert int(t.attrs["max_shared_memory_per_block"]) == 101376 and str(t.attrs["arch"]) == "sm_89"


def test_x86_target_has_cpu_and_cores(x86):
    assert x86.tvm_target["kind"] == "llvm" and x86.tvm_target["mcpu"] and x86.tvm_target["num-cores"] >= 1


# ------------------------------------------------------------------------------------------ compile
def test_compile_writes_checked_artifact_that_runs(tmp_path, x86):
    gpath = _genotype(tmp_path)
    out = tmp_path / "art"
    m = compile_genotype(gpath, x86, out, CompileConfig(size=(24, 20)))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so", "params.bin"]
    man = json.loads((out / "manifest.json").read_text())
    assert man == json.loads(json.dumps(m))
    assert man["input_shape"] == [1, 3, 24, 20] and man["output_shape"] == [1, 3, 24, 20]
    assert man["target"]["name"] == "x86" and man["latency_ms"] > 0
    assert man["max_abs_error"] <= 1e-4 and "random init" in man["weights"]["note"]
    assert man["tuning"]["tuned"] is False and man["tuning"]["database_digest"] is None
    assert man["export_rewrites"] and "sub-pixel" in man["export_rewrites"][0]  # its upsampling was rewritten
    # the artifact alone reproduces the generator
    from agd.arch import Genotype
    from agd.tuning.artifact import load_generator

    model = load_generator(Genotype.load(gpath), None)
    x = torch.rand(1, 3, 24, 20) * 2 - 1
    _, run = load_artifact(out)
    np.testing.assert_allclose(run(x.numpy()), model(x).detach().numpy(), atol=1e-4)


def test_compile_with_weights_records_them(tmp_path, x86):
    from agd.arch import Genotype, derive

    gpath = _genotype(tmp_path, "sr-tiny", seed=3)
    torch.manual_seed(42)
    model = derive(Genotype.load(gpath))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    man = compile_genotype(gpath, x86, tmp_path / "a", CompileConfig(), weights=tmp_path / "w.pt")
    assert man["weights"]["sha256"] and man["input_shape"] == [1, 3, 12, 12] and man["output_shape"] == [1, 3, 48, 48]
    with pytest.raises(AgdError, match="do not fit this genotype"):
        other = _genotype(tmp_path, "sr-tiny", seed=4)
        torch.save({"layers.0.conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
        compile_genotype(other, x86, tmp_path / "b", CompileConfig(), weights=tmp_path / "bad.pt")


def test_compile_sr_x3_student_upscales_by_three(tmp_path, x86):
    """An x3 SR student (one nearest-x3 upsampling, the bicubic skip at x3) exports to TVM and its x86
    build matches PyTorch."""
    from agd.arch import Genotype
    from agd.tuning.artifact import load_generator

    g = random_genotype(SearchSpace(get_config("sr-tiny", scale=3)), random.Random(3))
    gpath = g.save(tmp_path / "sr-x3.json")
    man = compile_genotype(gpath, x86, tmp_path / "a", CompileConfig(size=(11, 9)))
    assert man["input_shape"] == [1, 3, 11, 9] and man["output_shape"] == [1, 3, 33, 27]
    assert man["max_abs_error"] <= 1e-4
    model = load_generator(Genotype.load(gpath), None)
    x = torch.rand(1, 3, 11, 9)
    _, run = load_artifact(tmp_path / "a")
    np.testing.assert_allclose(run(x.numpy()), model(x).detach().numpy(), atol=1e-4)


def test_failed_numerical_check_writes_nothing(tmp_path, x86, monkeypatch):
    from agd.tuning import measure

    real = measure.CompiledModel.__call__
    monkeypatch.setattr(measure.CompiledModel, "__call__", lambda self, x: real(self, x) + 1e-2)
    with pytest.raises(AgdError, match=r"numerical check failed .* no artifact written"):
        compile_genotype(_genotype(tmp_path), x86, tmp_path / "art", CompileConfig())
    assert not (tmp_path / "art").exists() and not any(p.name.startswith(".art") for p in tmp_path.iterdir())


class _Unfolds(nn.Module):
    def forward(self, x):
        return nn.functional.unfold(x, 3).view(x.shape[0], -1, x.shape[2] - 2, x.shape[3] - 2)


def test_unsupported_operator_names_op_and_layer(x86):
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Conv2d(3, 3, 1), _Unfolds()])
    model.forward = lambda x: model.layers[1](model.layers[0](x))
    net = nn.Sequential()
    net.layers = model.layers
    net.forward = model.forward
    with pytest.raises(AgdError, match=r"im2col.* in layer layer2 \(layers\.1\), a _Unfolds"):
        compile_model(net, x86, (1, 3, 9, 9), CompileConfig(), {"layers.0": "layer1", "layers.1": "layer2"})


def test_arm64_cross_compiles_to_aarch64_elf(tmp_path):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ absent (apt-get install g++-aarch64-linux-gnu; .ci/run installs it)")
    from agd.tuning.build import build, export_library
    from agd.tuning.export import to_relax

    spec = resolve_target("arm64")
    prog = to_relax(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval(), torch.rand(1, 3, 8, 8))
    lib = export_library(build(prog.mod, spec), spec, tmp_path / "m.so")
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    with pytest.raises(AgdError, match="needs an aarch64 device; give it as rpc://"):
        compile_model(nn.Conv2d(3, 3, 1), spec, (1, 3, 4, 4), CompileConfig())


def test_arm64_runs_through_rpc_under_qemu(tmp_path, arm64_rpc):
    url, emulated = arm64_rpc
    spec = resolve_target(url)
    man = compile_genotype(_genotype(tmp_path), spec, tmp_path / "art", CompileConfig(size=(24, 20), emulated=emulated))
    assert man["max_abs_error"] <= 1e-4 and man["latency_ms"] > 0 and man["latency_emulated"] is emulated
    head = (tmp_path / "art" / "model.so").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    print(f"{url}: {man['latency_ms']:.3f} ms{' (EMULATED under qemu, not ARM speed)' if emulated else ''}")


def test_arm64_int8_compile_through_rpc(tmp_path, arm64_rpc, capsys):
    """`agd compile --target rpc://... --precision int8`: sdot kernels cross-compiled with +dotprod, the
    quality check run on the aarch64 device, the manifest says int8, emulated, and the target it built."""
    from cli_helpers import run_cli

    url, emulated = arm64_rpc
    args = ["compile", str(_genotype(tmp_path)), "--target", url, "--output", str(tmp_path / "art"), "--size", "24x20",
            "--precision", "int8", "--calibration", "builtin", "--trials", "0"]
    code, out, err = run_cli(capsys, *(args + (["--emulated"] if emulated else [])))
    assert code == 0, err
    man = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert man["precision"] == "int8" and "sdot" in man["int8"] and "+dotprod" in man["target"]["tvm_target"]["mattr"]
    assert man["quality"]["ok"] and man["quality"]["psnr_to_fp32_db"] >= 40 and man["latency_emulated"] is emulated
    assert not man["vs_eager"]["compared"] and "another device" in man["vs_eager"]["why"]
    assert "EMULATED" in out if emulated else True
    print(out.strip().splitlines()[0], f"{man['quality']['psnr_to_fp32_db']:.1f} dB to fp32")


def test_export_rewrites_convolutions_and_the_build_matches(x86):
    """TVM sees no conv2d_transpose, no strided conv2d and no wide 3x3 conv2d (agd.tuning.rewrite: sub-pixel,
    space-to-depth and Winograd forms), and the x86 build still matches PyTorch."""
    import tvm
    from tvm import relax

    from agd.tuning.build import build
    from agd.tuning.export import to_relax
    from agd.tuning.rewrite import WINOGRAD_MIN_WIDTH

    torch.manual_seed(0)
    w = WINOGRAD_MIN_WIDTH
    m = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1, padding_mode="reflect"),
                      nn.Conv2d(w, 8, 3, 2, 1), nn.ConvTranspose2d(8, 4, 3, 2, 1, 1), nn.ReLU()).eval()
    x = torch.rand(1, 3, 9, 7)
    prog = to_relax(m, x)
    text = prog.mod.script()
    assert "conv2d_transpose" not in text and "strides=[2, 2]" not in text
    # the narrow stem stays a direct 3x3; the Winograd layer is matrix products; the others become 2x2
    assert text.count("R.nn.conv2d(") == 3 and "R.matmul" in text
    vm = relax.VirtualMachine(build(prog.mod, x86), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()), *prog.params).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(out, m(x).numpy(), rtol=1e-5, atol=1e-5)

def test_cuda_codegen_builds_without_a_gpu(tmp_path):
    from agd.tuning.build import build, export_library
    from agd.tuning.export import to_relax

    spec = resolve_target("cuda", cuda_arch="sm_90")
    prog = to_relax(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.ReLU()).eval(),
                    torch.rand(1, 3, 8, 8))
    ex = build(prog.mod, spec)
    lib = export_library(ex, spec, tmp_path / "m.so")
    import importlib.util

    try:
        nvrtc = importlib.util.find_spec("cuda.bindings.nvrtc") is not None
    except ModuleNotFoundError:  # no "cuda" package at all
        nvrtc = False
    if not nvrtc:
        # TVM compiles CUDA at build time through NVRTC (cuda-bindings), as on the H200 machine, and embeds the
        # binary; without it (this CPU machine) it embeds the kernels' source, compiled when the library loads
        assert b"__global__" in lib.read_bytes()
    assert lib.stat().st_size > 0


# ------------------------------------------------------------------------------------------ RPC
def test_unreachable_rpc_tracker_times_out_clearly():
    from agd.tuning.measure import rpc_session

    spec = resolve_target(f"rpc://127.0.0.1:{_free_port()}/rk3399")
    t0 = time.perf_counter()
    with pytest.raises(AgdError, match=r"RPC tracker 127\.0\.0\.1:\d+ unreachable within 2 s"):
        rpc_session(spec, timeout_s=2)
    assert time.perf_counter() - t0 < 5
    with socket.socket() as silent:  # accepts connections (backlog) but never answers the handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        t0 = time.perf_counter()
        with pytest.raises(AgdError, match=rf"RPC tracker 127\.0\.0\.1:{port} did not answer within 0.5 s \(timed out\)"):
            rpc_session(resolve_target(f"rpc://127.0.0.1:{port}/pi"), timeout_s=0.5)
        assert time.perf_counter() - t0 < 3


def test_x86_runs_through_local_rpc_tracker(x86):
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tport = _free_port()
    tracker = Tracker("127.0.0.1", port=tport, port_end=tport + 1, silent=True)
    server = Server("127.0.0.1", port=_free_port(), port_end=65000, key="local-x86",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        time.sleep(1.0)  # the server registers with the tracker
        spec = TargetSpec("rpc-x86", x86.tvm_target, rpc=("127.0.0.1", tracker.port, "local-x86"))
        res = compile_model(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), spec, (1, 3, 8, 8),
                            CompileConfig())
        assert res["max_abs_error"] <= 1e-4 and res["latency"]["median_ms"] > 0
    finally:
        server.terminate()
        tracker.terminate()


# ------------------------------------------------------------------------------------------ latency table
def _small_space():
    return SearchSpace(get_config("sr-tiny", ops=("conv1x1", "conv3x3", "identity"), layers_per_cell=2, scale=2,
                                  reference_size=(8, 8)))


def test_latency_table_resumable_and_shaped_like_macs(tmp_path, x86):
    from agd.cost.latency import LatencyTable
    from agd.tuning.latency_table import TableBuildConfig, build_table

    space = _small_space()
    path = tmp_path / "lt.json"
    table = LatencyTable("x86", x86.tvm_target)
    with pytest.raises(AgdError, match="not measured"):
        table.tables(space)
    cfg = TableBuildConfig(overhead_networks=2)
    build_table(table, space, x86, None, cfg, path=path, limit=3)  # an interrupted build
    part = LatencyTable.load(path)
    assert len(part.entries) == 3 and not part.overheads
    n_missing = len(part.missing(space))
    build_table(part, space, x86, None, cfg, path=path)  # resumes: measures only what is missing
    table = LatencyTable.load(path)
    assert len(table.entries) == 3 + n_missing - sum(c[2] == "identity" for c in part.missing(space))
    assert len(table.provenance["runs"]) == 2
    assert table.provenance["runs"][0]["timing"] == {"number": 1, "repeat": 5, "min_repeat_ms": 50, "warmup": 1}
    assert table.provenance["runs"][0]["export_rewrites"]
    tables = table.tables(space)
    macs = space.macs_tables()
    assert [t.shape for t in tables] == [m.shape for m in macs]
    for t, m in zip(tables, macs):
        assert torch.equal(t.isnan(), m.isnan()) and (t.nan_to_num(1.0) >= 0).all()
    # differentiable expected latency
    sn = Supernet(space)
    exp, _ = sn.expected_cost([t.nan_to_num(0.0) for t in tables])
    (exp + table.overhead_ms).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sn.arch_parameters())
    g = random_genotype(space, random.Random(0))
    assert table.predict(g) == pytest.approx(table.operator_sum(g) + table.overhead(space))
    # one-hot choice reproduces the genotype's operator sum
    sn.fix(g)
    assert float(sn.expected_cost([t.nan_to_num(0.0) for t in tables])[0]) == pytest.approx(table.operator_sum(g))


def test_latency_table_times_with_its_own_settings(x86, monkeypatch):
    """Table timing runs one call per repeat (seconds-long untuned networks are not run 25 times)."""
    from agd.tuning.latency_table import TableBuildConfig, time_module
    from agd.tuning.measure import CompiledModel, TimingConfig

    seen, real = [], CompiledModel.time_ms

    def spy(self, x, cfg=TimingConfig()):
        seen.append(cfg)
        return real(self, x, cfg)

    monkeypatch.setattr(CompiledModel, "time_ms", spy)
    mine = TimingConfig(number=1, repeat=2, min_repeat_ms=1, warmup=0)
    assert time_module(nn.Conv2d(3, 5, 3, padding=1), x86, (1, 3, 9, 7), TableBuildConfig(timing=mine)) > 0
    assert time_module(nn.Conv2d(3, 5, 1), x86, (1, 3, 9, 7), TableBuildConfig()) > 0
    assert seen[0] == mine and seen[1].number == 1 and seen[1] != TimingConfig()


def test_latency_table_tunes_with_a_per_task_floor(tmp_path, x86, monkeypatch):
    """A table built with trials_per_task tunes each configuration with that floor and records it."""
    import agd.tuning.latency_table as latency_table
    from agd.cost.latency import LatencyTable
    from agd.tuning.latency_table import TableBuildConfig, build_table

    seen = []
    monkeypatch.setattr(latency_table, "tune", lambda mod, spec, db, cfg: seen.append(cfg))
    table = LatencyTable(x86.name, x86.tvm_target)
    sp = SearchSpace(get_config("sr-tiny"))
    build_table(table, sp, x86, (8, 8), TableBuildConfig(trials_per_task=6, database=tmp_path / "db"), limit=1)
    assert len(seen) == 1 and seen[0].trials_per_task == 6 and seen[0].trials == 0 and seen[0].trials_per_iter == 6
    assert table.provenance["runs"][-1]["trials_per_task"] == 6


def test_latency_table_will_not_mix_entries_of_another_export(tmp_path, x86):
    """Entries measured with other export rewrites (an older agd) are not topped up with new ones."""
    from agd.cost.latency import LatencyTable
    from agd.tuning.latency_table import TableBuildConfig, build_table
    from agd.tuning.rewrite import REWRITES

    old = LatencyTable("x86", x86.tvm_target, {"runs": [{"export_rewrites": list(REWRITES[:1])}]}, {"k": 1.0})
    with pytest.raises(AgdError, match="measured with export rewrites .* build a new table"):
        build_table(old, _small_space(), x86, None, TableBuildConfig(), path=tmp_path / "lt.json")
    assert len(old.provenance["runs"]) == 1 and not (tmp_path / "lt.json").exists()


def test_latency_table_rejects_corrupt_file(tmp_path):
    from agd.cost.latency import LatencyTable

    (tmp_path / "t.json").write_text(json.dumps({"format": "agd-latency-table", "version": 1, "target": "x86",
                                                 "tvm_target": {}, "entries": {"k": -1}}))
    with pytest.raises(AgdError, match="entry k is not a non-negative number"):
        LatencyTable.load(tmp_path / "t.json")
    (tmp_path / "u.json").write_text("{}")
    with pytest.raises(AgdError, match="not an agd latency table"):
        LatencyTable.load(tmp_path / "u.json")


# ------------------------------------------------------------------------------------------ compare
def test_compare_side_by_side_reports_every_backend(x86, monkeypatch):
    """Each row's error is against eager PyTorch; the TVM build's own output (captured) equals the model
    run in float64 by plain PyTorch here, and its reported error is its distance from eager float32."""
    import copy

    from agd.tuning import compare as C
    from agd.tuning.compare import CompareConfig, compare

    outputs = []

    class Recording(C.CompiledModel):
        def __call__(self, x):
            out = super().__call__(x)
            outputs.append(out.copy())
            return out

    monkeypatch.setattr(C, "CompiledModel", Recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = compare(model, x, x86,
                   CompareConfig(backends=("eager", "onnxruntime", "tvm-untuned", "tvm-tuned", "nope"), repeats=2,
                                 warmup=1))
    by = {r["backend"]: r for r in rows}
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double()).numpy()
        eager = model(x).double().numpy()
    assert outputs, "the TVM build was not run"
    tvm_out = outputs[0].astype(np.float64)
    assert tvm_out.shape == want.shape and np.abs(tvm_out - want).max() < 1e-4
    assert by["tvm-untuned"]["max_abs_error"] == pytest.approx(np.abs(tvm_out - eager).max(), abs=1e-7)
    assert by["eager"]["ok"]
    assert np.abs(eager - want).max() < 1e-5
    assert by["onnxruntime"]["ok"] and by["onnxruntime"]["max_abs_error"] < 1e-4
    assert by["tvm-untuned"]["ok"] and by["tvm-untuned"]["max_abs_error"] < 1e-4
    assert not by["tvm-tuned"]["ok"] and "database" in by["tvm-tuned"]["note"]
    assert not by["nope"]["ok"] and "unknown backend" in by["nope"]["note"]


def test_compare_says_when_tasks_have_no_measured_schedule(tmp_path, x86, monkeypatch):
    """A tuning run whose candidates all failed is reported, not passed off as tuned. (tune_tasks is
    stubbed and measures nothing.)"""
    from tvm.s_tir import meta_schedule as ms

    from agd.tuning.compare import CompareConfig, compare

    monkeypatch.setattr(ms.tune, "tune_tasks", lambda **kw: None)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    (row,) = compare(model, torch.rand(1, 3, 16, 16), x86,
                     CompareConfig(backends=("tvm-tuned",), database=tmp_path / "db", trials=8, repeats=1, warmup=0))
    assert not row["ok"] and "tasks without a measured schedule" in row["note"] and "no records" in row["note"]


# ------------------------------------------------------------------------------------------ tuning
_TUNE_SCRIPT = """
import sys, torch
from torch import nn
from agd.tuning.export import to_relax
from agd.tuning.targets import resolve_target
from agd.tuning.tune import TuneConfig, tune
from agd.arch import random_genotype
torch.manual_seed(0)
m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
prog = to_relax(m.eval(), torch.rand(1, 3, 16, 16))
tune(prog.mod, resolve_target("x86"), sys.argv[1], TuneConfig(trials=64, trials_per_iter=1, population=8))
"""  # a budget large enough that the run is still tuning when the test kills it


@pytest.mark.slow  # 30-60 s idle, 2-3 min on a loaded 2-core machine: three TVM imports and two tuned tasks
def test_tuning_workers_cannot_take_the_machines_memory():
    """The builder/runner worker initializer caps the address space: a runaway allocation fails there."""
    from agd.tuning.tune import worker_memory_limit

    code = ("from agd.tuning.tune import limit_worker_memory, worker_memory_limit\n"
            "limit_worker_memory()\n"
            "try:\n"
            "    bytearray(worker_memory_limit() + (1 << 30))\n"
            "except MemoryError:\n"
            "    print('capped')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "capped", out.stderr
    assert worker_memory_limit() >= 4 << 30


def test_trials_follow_each_tasks_share_of_the_work(x86, monkeypatch):
    from types import SimpleNamespace

    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from agd.tuning import tune as tune_mod
    from agd.tuning.build import fused_module, tvm_target
    from agd.tuning.export import to_relax

    tasks = [SimpleNamespace(name=n) for n in "abcd"]
    work = {"a": 8e9, "b": 1e9, "c": 1e9, "d": float("nan"), "e": 0.0, "f": 0.0}  # d: the estimator failed,
    monkeypatch.setattr(tune_mod, "task_work", lambda t: work[t.name])  # counted as average; e, f: gathers
    alloc = tune_mod.allocate_trials(tasks, 1000, 16)
    assert alloc[0] > 5 * alloc[1] and alloc[1] == alloc[2] >= 16 and alloc[3] > alloc[1]
    assert abs(sum(alloc) - 1000) <= len(tasks)
    assert tune_mod.allocate_trials(tasks, 2, 16) == [1, 1, 1, 1]  # a tiny budget is not inflated by the floor
    # tasks without arithmetic get the floor only, taken off the split: the budget still holds
    with_gathers = tune_mod.allocate_trials(tasks + [SimpleNamespace(name="e"), SimpleNamespace(name="f")], 1000, 16)
    assert with_gathers[4:] == [16, 16] and abs(sum(with_gathers) - 1000) <= len(with_gathers)
    assert with_gathers[0] > 5 * with_gathers[1]
    # floors that bind (five small tasks under 16 trials of share each) come off the large task's split
    work.update({f"s{i}": 1e6 for i in range(5)})
    binding = tune_mod.allocate_trials([SimpleNamespace(name="a")] + [SimpleNamespace(name=f"s{i}") for i in range(5)],
                                       100, 16)
    assert binding == [20, 16, 16, 16, 16, 16]
    # a resumed or reused task gets only what its share lacks, never its whole share again
    assert tune_mod.trials_left([800, 100, 100, 16], [1039, 40, 0, 16]) == [0, 60, 100, 0]
    monkeypatch.undo()
    # on a real model the estimator sees every convolution task, weighted by how often it is called
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    prog = to_relax(net, torch.rand(1, 3, 16, 16))
    target = tvm_target(x86)
    convs = [t for t in extract_tasks(fused_module(prog.mod, target), target) if "conv" in t.task_name]
    works = [tune_mod.task_work(t) for t in convs]
    assert all(w > 0 for w in works)
    # the largest: the 8->8 conv + ReLU, called twice (2 x (2 FLOPs per MAC x MACs)); the rest once
    assert max(works) == pytest.approx(2 * 2 * 16 * 16 * 8 * 8 * 9, rel=0.05)
    assert sorted(works)[:-1] == pytest.approx([2 * 16 * 16 * 8 * 3 * 9, 2 * 16 * 16 * 3 * 8 * 9], rel=0.05)


def test_one_run_shares_what_the_tasks_lack_under_the_gradient_scheduler(tmp_path, x86, monkeypatch):
    """The tasks lacking trials are tuned in one MetaSchedule run, for the sum of what they lack, under the
    gradient-based task scheduler; a finished run leaves each task its share (the ledger), so the same
    budget again tunes nothing and a larger one tunes the difference only. (tune_tasks is stubbed: this
    checks the budget, not MetaSchedule.)"""
    from tvm.s_tir import meta_schedule as ms

    import agd.tuning.tune as tune_module
    from agd.tuning.export import to_relax
    from agd.tuning.tune import TuneConfig, read_ledger, tune

    calls: list[dict] = []
    monkeypatch.setattr(ms.tune, "tune_tasks", lambda **kw: calls.append(kw))
    # the stub measures nothing: every task has one schedule once a run happened
    monkeypatch.setattr(tune_module, "_records_per_workload", lambda db, ts: [1 if calls else 0] * len(ts))
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    prog = to_relax(m.eval(), torch.rand(1, 3, 16, 16))
    db = tmp_path / "db"
    rep = tune(prog.mod, x86, db, TuneConfig(trials=100))
    assert len(calls) == 1 and isinstance(calls[0]["task_scheduler"], ms.task_scheduler.GradientBased)
    assert len(calls[0]["tasks"]) == rep.tasks_tuned == rep.tasks >= 2
    assert abs(calls[0]["max_trials_global"] - 100) <= rep.tasks  # (rounding of the shares)
    assert abs(sum(read_ledger(db).values()) - 100) <= rep.tasks
    again = tune(prog.mod, x86, db, TuneConfig(trials=100))
    assert len(calls) == 1 and again.tasks_tuned == 0
    tune(prog.mod, x86, db, TuneConfig(trials=300))
    assert len(calls) == 2 and abs(calls[1]["max_trials_global"] - 200) <= 2 * rep.tasks
    # a budget smaller than a round per task: rounds shrink so that the first round reaches every task
    tune(prog.mod, x86, tmp_path / "small", TuneConfig(trials=8, trials_per_iter=16))
    assert calls[2]["num_trials_per_iter"] * len(calls[2]["tasks"]) <= calls[2]["max_trials_global"]


def test_trials_per_task_gives_every_task_its_floor(tmp_path, x86, monkeypatch):
    """--trials-per-task: the budget grows with the network's tasks and every task's share is at least the
    floor, whatever the per-network trials say (tune_tasks stubbed: this checks the budget)."""
    from tvm.s_tir import meta_schedule as ms

    import agd.tuning.tune as tune_module
    from agd.tuning.export import to_relax
    from agd.tuning.tune import TuneConfig, budget_for, read_ledger, tune

    assert budget_for(TuneConfig(trials=64), 22) == (64, 16)
    assert budget_for(TuneConfig(trials=64, trials_per_task=16), 22) == (352, 16)
    assert budget_for(TuneConfig(trials=500, trials_per_task=16), 22) == (500, 16)
    assert budget_for(TuneConfig(trials=0, trials_per_task=8), 3) == (24, 8)
    calls: list[dict] = []
    monkeypatch.setattr(ms.tune, "tune_tasks", lambda **kw: calls.append(kw))
    monkeypatch.setattr(tune_module, "_records_per_workload", lambda db, ts: [1 if calls else 0] * len(ts))
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    prog = to_relax(m.eval(), torch.rand(1, 3, 16, 16))
    rep = tune(prog.mod, x86, tmp_path / "db", TuneConfig(trials=0, trials_per_task=12))
    assert rep.tasks >= 2 and calls[0]["max_trials_global"] == 12 * rep.tasks
    assert sorted(read_ledger(tmp_path / "db").values()) == [12] * rep.tasks


def test_tasks_whose_candidates_all_failed_are_retried_and_left_out_of_the_ledger(tmp_path, x86, monkeypatch):
    """A task without a measured schedule would build with TVM's default one: the run gives it further
    rounds (``retries``), reports what is still unscheduled, and does not mark it tuned, so the next run
    tries again. (tune_tasks is stubbed and measures nothing: every candidate "failed".)"""
    from tvm.s_tir import meta_schedule as ms

    from agd.tuning.export import to_relax
    from agd.tuning.tune import TuneConfig, read_ledger, tune

    calls: list[dict] = []
    monkeypatch.setattr(ms.tune, "tune_tasks", lambda **kw: calls.append(kw))
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    prog = to_relax(m.eval(), torch.rand(1, 3, 16, 16))
    db = tmp_path / "db"
    rep = tune(prog.mod, x86, db, TuneConfig(trials=32, retries=2))
    assert rep.tasks >= 2 and rep.tasks_unscheduled == rep.tasks_tuned == rep.tasks
    assert len(calls) == 3 and all(len(c["tasks"]) == rep.tasks for c in calls)
    assert calls[1]["max_trials_global"] == rep.tasks * calls[0]["num_trials_per_iter"]
    assert read_ledger(db) == {}
    again = tune(prog.mod, x86, db, TuneConfig(trials=32, retries=0))
    assert again.tasks_tuned == rep.tasks and len(calls) == 4


def test_measurement_arguments_index_in_bounds():
    """Gather indices (integer arguments) are zero, floating-point ones random, as MetaSchedule fills them."""
    import numpy as np
    import tvm

    from agd.tuning.tune import alloc_local_arguments

    (args,) = alloc_local_arguments(tvm.cpu(), [["TENSOR", "float32", [4, 5]], ["TENSOR", "int64", [7]]], 1)
    assert args[0].numpy().shape == (4, 5) and np.unique(args[0].numpy()).size > 1
    assert args[1].numpy().dtype == np.int64 and not args[1].numpy().any()
    with pytest.raises(NotImplementedError):
        alloc_local_arguments(tvm.cpu(), [["SCALAR", "int32"]], 1)


def test_tensor_intrinsics_import_registers_them_and_restores_inspect():
    """The faster ``import tvm.s_tir.tensor_intrin`` (a fresh process: the import happens once per process)
    registers TVM's tensorization intrinsics, answers frame lookups of ``<frozen ...>`` files as
    ``inspect.getmodule`` does, and leaves ``inspect.getmodule`` as it found it."""
    code = ("import inspect, sys\n"
            "from agd.tuning.tune import import_tensor_intrinsics\n"
            "before = inspect.getmodule\n"
            "import_tensor_intrinsics()\n"
            "assert inspect.getmodule is before and 'tvm.s_tir.tensor_intrin' in sys.modules\n"
            "from tvm.s_tir import TensorIntrin\n"
            "from tvm.s_tir.tensor_intrin import x86, arm_cpu, cuda\n"
            "for name in (x86.VNNI_DOT_16x4_INTRIN, x86.AVX512_DOT_16x4_INTRIN, cuda.WMMA_SYNC_16x16x16_f16f16f32_INTRIN):\n"
            "    assert TensorIntrin.get(name) is not None, name\n"
            "print('ok', len(sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_round_size():
    from agd.tuning.tune import round_size

    assert round_size(16, 2000, 46) == 16  # a large budget keeps the configured rounds
    assert round_size(16, 16, 5) == 3  # 5 tasks x 3 trials: every task gets its first round
    assert round_size(16, 3, 5) == 1  # never zero


def test_killed_tuning_resumes_from_database_and_tuned_build_matches(tmp_path, x86):
    from agd.tuning.tune import TuneConfig, database_records, tune

    db = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-c", _TUNE_SCRIPT, str(db)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while database_records(db) == 0 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # killed mid-way: after its first task's records
        proc.wait()
    killed_with = database_records(db)
    assert killed_with >= 1
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    from agd.tuning.export import to_relax

    prog = to_relax(m.eval(), torch.rand(1, 3, 16, 16))
    # a budget above what the killed run spent: the resumed run gives the tasks only what they lack
    cfg = TuneConfig(trials=killed_with + 16, trials_per_iter=1, population=8)
    rep = tune(prog.mod, x86, db, cfg)
    assert rep.records_before == killed_with and rep.tasks_reused + rep.tasks_tuned == rep.tasks >= 2
    assert rep.records_before < rep.records_after <= cfg.trials + rep.tasks  # (+ rounding of the shares)
    again = tune(prog.mod, x86, db, cfg)
    assert again.tasks_tuned == 0 and again.records_after == rep.records_after  # nothing left to tune
    res = compile_model(m, x86, (1, 3, 16, 16), CompileConfig(database=db))
    assert res["tuned"] and res["max_abs_error"] <= 1e-4



def test_every_task_is_tuned_once_even_when_metaschedule_records_fewer(tmp_path, x86):
    """Instance norms, reflect-pad gathers and the convolution are all tuned (none keeps TVM's
    single-threaded default schedule); a task whose design space runs out before its share (the
    gather) is not tuned again on the next run: the ledger beside the database remembers the trials."""
    from agd.tuning.export import to_relax
    from agd.tuning.tune import LEDGER, TuneConfig, read_ledger, tune

    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(4), nn.ReLU())
    prog = to_relax(m.eval(), torch.rand(1, 3, 8, 8))
    db = tmp_path / "db"
    cfg = TuneConfig(trials=24, min_trials_per_task=8, trials_per_iter=8, population=8)
    first = tune(prog.mod, x86, db, cfg)
    assert first.tasks >= 3 and first.tasks_tuned == first.tasks  # conv, norm and the pad's gathers
    # each has a measured schedule: the gathers' index arguments are in bounds when measured
    assert first.tasks_unscheduled == 0
    ledger = read_ledger(db)
    assert (db / LEDGER).is_file() and len(ledger) == first.tasks and min(ledger.values()) >= 1
    assert first.records_after - first.records_before < sum(ledger.values())  # MetaSchedule recorded fewer
    again = tune(prog.mod, x86, db, cfg)
    assert again.tasks_tuned == 0 and again.records_after == first.records_after
    only_conv = tune(prog.mod, x86, db, TuneConfig(trials=1, task_filter=("conv",)))
    assert only_conv.tasks < first.tasks and only_conv.tasks_tuned == 0

def test_cli_compile_and_bad_target(tmp_path, capsys):
    from agd.cli import main

    gpath = _genotype(tmp_path, "sr-tiny", seed=5)
    with pytest.raises(SystemExit) as e:
        main(["compile", str(gpath), "--target", "x86-64", "--output", str(tmp_path / "o")])
    assert e.value.code == 2 and "unknown target 'x86-64'" in capsys.readouterr().err
    main(["compile", str(gpath), "--target", "x86", "--output", str(tmp_path / "o"), "--database", str(tmp_path / "db"),
          "--trials", "0"])
    out = capsys.readouterr().out
    assert "wrote" in out and "untuned" in out and (tmp_path / "o" / "manifest.json").is_file()
    # untuned: the CLI and the manifest say, measured, how the build compares with eager PyTorch
    v = json.loads((tmp_path / "o" / "manifest.json").read_text())["vs_eager"]
    assert v["compared"] and v["eager_ms"] > 0 and v["tvm_ms"] > 0 and "against eager PyTorch here" in out
    assert v["speedup"] == pytest.approx(v["eager_ms"] / v["tvm_ms"])


def test_latency_measure_targets(tmp_path, capsys):
    """latency measure runs on this machine: x86 or cuda; cuda without a GPU says so in one line."""
    from agd.cli import main

    gpath = _genotype(tmp_path, "sr-tiny", seed=5)
    with pytest.raises(SystemExit) as e:
        main(["latency", "measure", str(gpath), "--target", "arm64"])
    assert e.value.code != 0 and "--target 'arm64': latency measure runs on this machine" in capsys.readouterr().err
    if torch.cuda.is_available():
        return
    with pytest.raises(SystemExit) as e:
        main(["latency", "measure", str(gpath), "--target", "cuda", "--backends", "eager"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "target cuda: no CUDA device visible to torch" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the cuda comparison runs on a GPU machine")
def test_compare_on_the_gpu():
    """Eager, torch.compile and TVM (dlight schedules) on the GPU, each checked against float32 PyTorch."""
    from agd.tuning.compare import CompareConfig, compare

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
    rows = compare(model, torch.rand(1, 3, 32, 32), resolve_target("cuda"),
                   CompareConfig(backends=("eager", "tvm-untuned"), repeats=3, warmup=1))
    by = {r["backend"]: r for r in rows}
    assert by["eager"]["ok"] and "TF32" in by["eager"]["note"]
    assert by["tvm-untuned"]["ok"], by["tvm-untuned"]["note"]
    assert by["tvm-untuned"]["max_abs_error"] < 1e-4
    assert next(model.parameters()).device.type == "cpu"  # the caller's model is not moved


def test_latency_measure_json_stays_json_while_tuning(tmp_path, capsys):
    """MetaSchedule logs to stdout while it tunes; with --json that and the progress lines go to stderr and stdout parses."""
    from agd.cli import main

    gpath = _genotype(tmp_path, "sr-tiny", seed=5)
    main(["latency", "measure", str(gpath), "--size", "8x8", "--backends", "tvm-tuned", "--trials", "1",
          "--database", str(tmp_path / "db"), "--repeats", "1", "--json"])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["rows"]
    assert [r["backend"] for r in rows] == ["tvm-tuned"] and rows[0]["ok"], rows
    assert "tvm-tuned: " in captured.err  # progress still shows, on stderr
