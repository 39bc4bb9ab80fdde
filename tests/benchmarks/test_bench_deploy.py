"""Deployment benchmark (``agd bench deploy``): a real derived student of each space at batch 1 on this
CPU, per precision: PyTorch eager, torch.compile, ONNX Runtime, TVM untuned and tuned (fp32); bf16
autocast; ONNX Runtime QDQ, PT2E and TVM VNNI int8.

As a plain test (``--benchmark-disable``, the default) it runs a tiny derived network with every
backend but torch.compile and tuning, to check the pipeline (torch.compile's first compile alone takes tens of seconds here). Measure with
``pytest tests/benchmarks/test_bench_deploy.py --benchmark-enable -s``: the two examples/ students at
their reference size; ``AGD_BENCH_TRIALS=N`` tunes each with N MetaSchedule trials into
``AGD_BENCH_DB`` (default tvm-db/x86) first. Figures go to BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed")

from agd.arch import random_genotype  # noqa: E402
from agd.bench.deploy import DEFAULT_STUDENTS, bench_deploy  # noqa: E402
from agd.machine import cpu_summary, precision_reason  # noqa: E402
from agd.space import SearchSpace, get_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_bench_deploy(measuring, tmp_path):
    full = measuring
    if full:
        paths = [REPO / p for p in DEFAULT_STUDENTS]
        trials = int(os.environ.get("AGD_BENCH_TRIALS", "0"))
        db = Path(os.environ.get("AGD_BENCH_DB", "tvm-db/x86"))
        res = bench_deploy(paths, None, trials, db, repeats=10, threads=None, progress=print)
        print(json.dumps(res, indent=1))
    else:
        g = random_genotype(SearchSpace(get_config("translation-tiny")), random.Random(0))
        paths = [g.save(tmp_path / "tiny.json")]
        # every precision's cheap rows (torch.compile's and PT2E's compiles take tens of seconds here: their
        # own tests cover them)
        res = bench_deploy(paths, (32, 32), 0, tmp_path / "db", repeats=2, threads=None,
                           backends=("eager", "onnxruntime", "tvm-untuned", "eager-bf16", "tvm-bf16",
                                     "onnxruntime-int8", "tvm-int8"))
    assert res["device"] == cpu_summary()
    for s in res["students"]:
        by = {r["backend"]: r for r in s["rows"]}
        assert by["eager"]["ok"] and by["onnxruntime"]["ok"] and by["tvm-untuned"]["ok"]
        assert by["tvm-untuned"]["max_abs_error"] < 1e-3 and by["onnxruntime"]["max_abs_error"] < 1e-3
        # eager fp32 is the reference every other row's error and PSNR are taken against (not a result itself)
        assert by["eager"]["median_ms"] > 0 and by["tvm-untuned"]["psnr_to_fp32_db"] > 60
        if full:
            continue
        assert not by["tvm-bf16"]["ok"] and by["tvm-bf16"]["precision"] == "bf16"
        for name, p, floor in (("eager-bf16", "bf16", 25.0), ("onnxruntime-int8", "int8", 20.0), ("tvm-int8", "int8", 20.0)):
            r = by[name]
            assert r["precision"] == p
            if precision_reason(p):
                assert not r["ok"] and precision_reason(p) in r["note"]
            else:
                assert r["ok"], r["note"]
                assert r["psnr_to_fp32_db"] > floor, (name, r)
