"""Precisions on this CPU (agd.machine), ``agd info``'s precision rows, ``agd compile``'s defaults and bad
input (bf16 without bf16 instructions, int8 without calibration images, an unknown precision), and the
filter that keeps TVM's native log noise off the terminal."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

pytest.importorskip("tvm")

from cli_helpers import run_cli  # noqa: E402

from agd import machine  # noqa: E402
from agd.arch import random_genotype
from agd.io import AgdError  # noqa: E402
from agd.space import SearchSpace, get_config  # noqa: E402

ZEN5 = machine.Cpu("AMD EPYC", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}), 2)
OLD = machine.Cpu("Intel Xeon (Skylake)", frozenset({"avx2", "avx512f", "avx512bw"}), 2)
SPR = machine.Cpu("Intel Xeon (Sapphire Rapids)", frozenset({"avx512f", "amx_tile", "amx_bf16", "amx_int8"}), 2)


def _genotype(tmp_path: Path, preset: str = "sr-tiny", seed: int = 5) -> Path:
    g = random_genotype(SearchSpace(get_config(preset)), random.Random(seed))
    return g.save(tmp_path / f"{preset}.json")


def test_precision_needs_name_the_missing_extension():
    assert machine.precision_reason("fp32", OLD) is None
    assert machine.precision_reason("bf16", ZEN5) is None and machine.precision_reason("int8", ZEN5) is None
    assert machine.precision_reason("bf16", SPR) is None and machine.precision_reason("int8", SPR) is None
    why = machine.precision_reason("bf16", OLD)
    assert "AVX512-BF16 or AMX-BF16" in why and "Skylake" in why
    assert "AVX512-VNNI" in machine.precision_reason("int8", OLD)
    assert machine.precision_instructions("int8", SPR) == "AMX-INT8"
    with pytest.raises(AgdError, match="expected one of fp32, bf16, int8"):
        machine.precision_reason("fp16")


def test_cpu_summary_names_model_and_extensions():
    s = machine.cpu_summary()
    c = machine.cpu()
    assert c.model in s and f"{c.logical_cores} logical cores" in s
    if c.has("avx512f"):
        assert "AVX-512F" in s
    assert ("no AMX" in s) == (not c.has("amx_tile"))


def test_info_lists_precisions_and_cpu(capsys):
    code, out, err = run_cli(capsys, "info", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["versions"]["cpu"] == machine.cpu_summary()
    rows = {b["name"]: b for b in info["backends"]}
    for p in machine.PRECISIONS:
        r = rows[f"{p} on this CPU"]
        assert r["available"] == (machine.precision_reason(p) is None)


def test_compile_bf16_on_a_cpu_without_bf16_names_the_extension(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "cpu", lambda: OLD)
    g = _genotype(tmp_path)
    code, _, err = run_cli(capsys, "compile", g, "--target", "x86", "--output", tmp_path / "o", "--precision", "bf16")
    assert code == 2 and "--precision bf16" in err and "AVX512-BF16" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_compile_bf16_is_refused_with_the_reason(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "cpu", lambda: ZEN5)
    code, _, err = run_cli(capsys, "compile", _genotype(tmp_path), "--target", "x86", "--output", tmp_path / "o",
                           "--precision", "bf16", "--trials", "0")
    assert code == 2 and "no tensor intrinsic for AVX512-BF16" in err and not (tmp_path / "o").exists()


def test_compile_int8_needs_calibration_and_a_known_precision(tmp_path, capsys, monkeypatch):
    # the inputs are checked on any machine: Zen 5 (AVX512-VNNI) stands in for this CPU, whose int8 check would
    # otherwise answer first where it lacks VNNI (that refusal is checked with OLD above)
    monkeypatch.setattr(machine, "cpu", lambda: ZEN5)
    g = _genotype(tmp_path)
    code, _, err = run_cli(capsys, "compile", g, "--target", "x86", "--output", tmp_path / "o", "--precision", "int8")
    assert code == 2 and "no calibration images" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "compile", g, "--target", "x86", "--output", tmp_path / "o", "--precision", "int8",
                           "--calibration", tmp_path / "nowhere")
    assert code == 2 and "nowhere: no such folder" in err
    code, _, err = run_cli(capsys, "compile", g, "--target", "x86", "--output", tmp_path / "o", "--precision", "fp16")
    assert code == 2 and "'fp16'" in err and "fp32, bf16, int8" in err
    assert not (tmp_path / "o").exists()


def test_compile_tunes_by_default(tmp_path, capsys, monkeypatch):
    """Without --trials, compile gets the default budget (tuned); the build itself is stubbed here (the
    tuned path runs in test_tuning and in BENCHMARKS.md's timing of the default)."""
    from agd.commands import tvm as tvm_cmd
    from agd.tuning import artifact

    seen = {}

    def fake(genotype, spec, output, cfg, weights=None):
        seen["trials"] = cfg.trials
        raise AgdError("stopped after reading the config")

    monkeypatch.setattr(artifact, "compile_genotype", fake)
    code, _, err = run_cli(capsys, "compile", _genotype(tmp_path), "--target", "x86", "--output", tmp_path / "o")
    assert code == 2 and seen["trials"] == artifact.DEFAULT_TRIALS == tvm_cmd.DEFAULT_TRIALS > 0


def test_native_log_noise_is_filtered_and_the_rest_kept(capfd, monkeypatch):
    from agd.tuning.quiet import quiet_native_logs

    monkeypatch.delenv("AGD_TVM_VERBOSE", raising=False)
    with quiet_native_logs() as q:
        os.write(2, b"[06:40:44] /project/include/tvm/topi/transform.h:1261: Warning: Fast mode segfaults when "
                    b"there are out-of-bounds indices. Make sure input indices are in bound\n")
        os.write(2, b"[06:40:45] src/x.cc:1: Warning: Scope Saving something\n")
        os.write(2, b"a real error line\n")
    err = capfd.readouterr().err
    assert "a real error line" in err and "Fast mode" not in err and "Scope Saving" not in err
    assert q.dropped == {"take fast mode": 1, "scope saving": 1} and "2 TVM log lines filtered" in q.summary()
    monkeypatch.setenv("AGD_TVM_VERBOSE", "1")
    with quiet_native_logs() as q:
        os.write(2, b"Warning: Scope Saving shown\n")
    assert "Scope Saving shown" in capfd.readouterr().err and not q.dropped


def test_calibration_inputs_are_network_inputs_apart_from_held_out():
    from agd.tuning.calibration import network_inputs

    cal = network_inputs("builtin", (12, 10), 4, n=3)
    held = network_inputs("builtin", (12, 10), 4, n=3, held_out=True)
    for x in cal + held:  # SR networks take [0, 1] LR images
        assert tuple(x.shape) == (1, 3, 12, 10) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert not any(bool((a == b).all()) for a in cal for b in held)
    tr = network_inputs("builtin", (16, 16), 1, n=4)  # translation networks [-1, 1]
    assert min(float(x.min()) for x in tr) < -0.5 and max(float(x.max()) for x in tr) <= 1


# ------------------------------------------------------------------ latency tables per precision and runtime
def _tiny_space():
    return SearchSpace(get_config("sr-tiny"))


def test_latency_table_of_another_runtime_and_int8(tmp_path):
    """A table names its precision and runtime; entries are measured with that deployment (ONNX Runtime
    here, TVM int8 on VNNI where the CPU has it), and one deployment's table is never extended with another's."""
    from agd.cost.latency import LatencyTable
    from agd.tuning.latency_table import TableBuildConfig, build_table
    from agd.tuning.targets import resolve_target

    x86 = resolve_target("x86")
    space = _tiny_space()
    ort = LatencyTable("x86", x86.tvm_target, precision="fp32", runtime="onnxruntime")
    build_table(ort, space, x86, None, TableBuildConfig(runtime="onnxruntime"), path=tmp_path / "ort.json", limit=2)
    back = LatencyTable.load(tmp_path / "ort.json")
    assert (back.precision, back.runtime) == ("fp32", "onnxruntime") and len(back.entries) == 2
    assert all(v > 0 for v in back.entries.values()) and back.provenance["runs"][0]["runtime"] == "onnxruntime"
    with pytest.raises(AgdError, match="measured at x86, fp32 via onnxruntime, not int8 via tvm"):
        build_table(back, space, x86, None, TableBuildConfig(precision="int8"), path=tmp_path / "ort.json", limit=1)
    if machine.precision_reason("int8") is None:
        i8 = LatencyTable("x86", x86.tvm_target, precision="int8")
        build_table(i8, space, x86, None, TableBuildConfig(precision="int8"), limit=1)
        assert len(i8.entries) == 1 and next(iter(i8.entries.values())) > 0


def test_search_refuses_a_table_of_another_deployment(tmp_path):
    """`agd search --latency` names what it budgets for; a table of another precision or runtime is refused."""
    from latency_tables import synthetic_table

    from agd.cost.latency import LatencyTable
    from agd.search.budget import cost_extremes, latency_budget

    space = _tiny_space()
    table = synthetic_table(space, [None], precision="int8", runtime="tvm")
    path = table.save(tmp_path / "i8.json")
    lo, hi = cost_extremes(space, table.tables(space))
    ms = f"{0.25 + (lo + hi) / 2}ms"
    budget, _ = latency_budget(space, ms, path, "x86", precision="int8", runtime="tvm")
    assert "on x86, int8 via tvm" in budget.describe()
    with pytest.raises(AgdError, match=r"i8.json: measured at x86, int8 via tvm, not precision fp32"):
        latency_budget(space, ms, path, "x86", precision="fp32")
    with pytest.raises(AgdError, match=r"not runtime onnxruntime"):
        latency_budget(space, ms, path, "x86", runtime="onnxruntime")
    # a version-1 file (before precisions) reads as an fp32 TVM table
    d = json.loads(path.read_text())
    d.update(version=1)
    del d["precision"], d["runtime"]
    (tmp_path / "v1.json").write_text(json.dumps(d))
    v1 = LatencyTable.load(tmp_path / "v1.json")
    assert (v1.precision, v1.runtime) == ("fp32", "tvm")


def test_latency_table_build_bad_runtime_and_precision(tmp_path, capsys):
    out = tmp_path / "t.json"
    code, _, err = run_cli(capsys, "latency-table", "build", "--target", "x86", "--space", "sr-tiny", "--output", out,
                           "--runtime", "tensorrt")
    assert code == 2 and "--runtime 'tensorrt'" in err and "tvm, onnxruntime, inductor" in err
    if machine.precision_reason("bf16") is None:
        code, _, err = run_cli(capsys, "latency-table", "build", "--target", "x86", "--space", "sr-tiny", "--output",
                               out, "--runtime", "onnxruntime", "--precision", "bf16")
        assert code == 2 and "no bf16 convolution" in err
    code, _, err = run_cli(capsys, "latency-table", "build", "--target", "arm64", "--space", "sr-tiny", "--output", out,
                           "--runtime", "onnxruntime")
    assert code == 2 and "timed on this machine" in err
    assert not out.exists()


def test_an_rpc_device_brings_its_own_instructions(tmp_path, monkeypatch):
    """This CPU's missing int8 instructions refuse an x86 build, never a build for an rpc:// aarch64 device (sdot
    runs there): CI's AMD EPYC without VNNI refused `agd compile --target rpc://... --precision int8` before."""
    from torch import nn

    from agd.cost.latency import check_runtime
    from agd.tuning.artifact import CompileConfig, compile_model
    from agd.tuning.targets import resolve_target

    monkeypatch.setattr(machine, "cpu", lambda: OLD)
    rpc, x86 = resolve_target("rpc://127.0.0.1:9190/agd-arm64"), resolve_target("x86")
    assert not rpc.runs_on_this_cpu and x86.runs_on_this_cpu and not resolve_target("cuda").runs_on_this_cpu
    cfg = CompileConfig(precision="int8", trials=0)
    with pytest.raises(AgdError, match="AVX512-VNNI"):
        compile_model(nn.Conv2d(3, 3, 1), x86, (1, 3, 8, 8), cfg)
    with pytest.raises(AgdError, match="no calibration images"):  # past the CPU check, before the device is reached
        compile_model(nn.Conv2d(3, 3, 1), rpc, (1, 3, 8, 8), cfg)
    with pytest.raises(AgdError, match="AVX512-VNNI"):
        check_runtime("tvm", "int8")
    check_runtime("tvm", "int8", on_this_cpu=False)
    with pytest.raises(AgdError, match="no bf16 convolution"):
        check_runtime("onnxruntime", "bf16", on_this_cpu=False)
