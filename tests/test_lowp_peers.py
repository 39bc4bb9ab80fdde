"""agd.tuning.lowp_peers: the low-precision deployments agd's TVM build is compared with (bf16 autocast, PT2E
int8 through inductor, ONNX Runtime static int8). On the two example students (random init, small inputs):
each keeps the float32 output's shape and stays within a measured PSNR floor of the float32 eager output;
calibration is crops of real photographs (the built-in samples), never the test input; missing
calibration or a missing dependency is an error that names it."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agd.arch import Genotype
from agd.machine import precision_reason
from agd.tuning import lowp_peers as lp
from agd.tuning.artifact import load_generator

REPO = Path(__file__).resolve().parents[1]

# PSNR (dB) to the float32 eager output, measured on this setup (seeded init, input and crops; 2-thread
# AMD Zen 5, AVX-512 VNNI + BF16) and set a few dB lower. The SR example's random-init output is nearly
# flat (std ~0.02 on the [-1, 1] range), hence its far higher figures.
#          measured:  bf16 eager / compiled, PT2E int8, ORT int8 (Percentile)
#   translation 64x64:  39.6 / 40.4,  32.3,  25.0
#   SR x4 32x32:        84.8 / 84.8,  70.4,  66.7
FLOORS = {
    "translation": {"bf16": 35.0, "pt2e": 28.0, "ort": 21.0},
    "sr": {"bf16": 78.0, "pt2e": 65.0, "ort": 61.0},
}
# Without an int8 dot-product instruction (VNNI, AMX) oneDNN and ONNX Runtime multiply u8 x s8 with
# vpmaddubsw, whose int16 pair sums saturate: the int8 peers lose accuracy. Measured on a 2-core AMD EPYC
# with AVX2 and no AVX-512 (2026-12-04): translation PT2E 18.6, ORT 18.1; SR PT2E 53.8, ORT 53.1.
INT8_FLOORS_WITHOUT_VNNI = {"translation": {"pt2e": 16.0, "ort": 16.0}, "sr": {"pt2e": 50.0, "ort": 50.0}}
CASES = {"translation": ("translation_r9_small.json", 64), "sr": ("sr_x4_small.json", 32)}


def _crops(hw: int, n: int, seed: int) -> list[torch.Tensor]:
    """``n`` random hw x hw crops of built-in sample photographs, mapped into [-1, 1], as (1, 3, hw, hw)."""
    from agd.data.samples import sample_images

    imgs = [img for _, img in sample_images(["astronaut", "rocket", "motorcycle", "camera"], available_only=True)]
    assert imgs, "no built-in sample photographs installed"
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        img = imgs[k % len(imgs)]
        h, w = img.shape[1:]
        i = int(torch.randint(0, h - hw + 1, (1,), generator=g))
        j = int(torch.randint(0, w - hw + 1, (1,), generator=g))
        out.append((img[:, i:i + hw, j:j + hw] * 2 - 1).unsqueeze(0).contiguous())
    return out


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name = request.param
    path, hw = CASES[name]
    model = load_generator(Genotype.load(REPO / "examples" / path), None)
    x = torch.rand(1, 3, hw, hw, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = model(x).numpy()
    return {"name": name, "model": model, "x": x, "ref": ref, "calibration": _crops(hw, 4, seed=1)}


def _check(case, f, note: str, kind: str) -> float:
    before = {k: v.clone() for k, v in case["model"].state_dict().items()}
    y = f(case["x"])
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert tuple(y.shape) == case["ref"].shape
    assert isinstance(note, str) and note
    psnr = lp.psnr_to(case["ref"], y.numpy())
    floor = FLOORS[case["name"]][kind]
    if kind in ("pt2e", "ort") and precision_reason("int8") is not None:
        floor = INT8_FLOORS_WITHOUT_VNNI[case["name"]][kind]
    assert psnr >= floor, f"{case['name']} {kind}: PSNR {psnr:.2f} dB < floor {floor} dB ({note})"
    for k, v in case["model"].state_dict().items():  # the caller's model is left as it was
        assert torch.equal(v, before[k]), k
    return psnr


# ------------------------------------------------------------------------------------------ psnr_to
def test_psnr_to():
    a = np.linspace(-1, 1, 100).reshape(1, 1, 10, 10)
    assert lp.psnr_to(a, a.copy()) == math.inf
    b = a + 0.02  # mse 4e-4 on a range of 2: 10 log10(4 / 4e-4) = 40 dB
    assert lp.psnr_to(a, b) == pytest.approx(40.0)
    assert lp.psnr_to(a, b, data_range=1.0) == pytest.approx(40.0 - 20 * math.log10(2))
    with pytest.raises(ValueError, match="shapes differ"):
        lp.psnr_to(a, a[..., :5])


# ------------------------------------------------------------------------------------------ peers
# the compiled bf16 path is checked on the translation example only (its compile is the slow part)
@pytest.mark.parametrize("case,compiled", [("translation", False), ("translation", True), ("sr", False)],
                         ids=["translation-eager", "translation-compiled", "sr-eager"], indirect=["case"],
                         scope="module")
def test_torch_bf16(case, compiled):
    f, note = lp.torch_bf16(case["model"], case["x"], compiled=compiled)
    _check(case, f, note, "bf16")
    assert "bf16" in note and ("torch.compile" in note) == compiled


def test_pt2e_int8(case):
    pytest.importorskip("torchao", reason="torchao (PT2E quantization) is not installed")
    import torch._inductor.config as inductor_config

    before = inductor_config.freezing, inductor_config.pre_grad_custom_pass
    f, note = lp.pt2e_int8(case["model"], case["x"], case["calibration"])
    assert (inductor_config.freezing, inductor_config.pre_grad_custom_pass) == before  # no global change
    _check(case, f, note, "pt2e")
    assert "int8 conv/linear layers" in note and "freezing on" in note


def test_ort_int8(case):
    pytest.importorskip("onnxruntime")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    f, note = lp.ort_int8(case["model"], case["x"], case["calibration"], threads=2)
    assert (list(root.handlers), root.level) == (handlers, level)  # quantize_static's logging leaves no trace
    _check(case, f, note, "ort")
    assert "QDQ" in note and lp.ORT_CALIBRATE_METHOD in note


# ------------------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def tiny():
    model = load_generator(Genotype.load(REPO / "examples" / "translation_r9_small.json"), None)
    return model, torch.rand(1, 3, 16, 16) * 2 - 1


@pytest.mark.parametrize("builder", ["pt2e_int8", "ort_int8"])
def test_empty_calibration_raises(tiny, builder):
    model, x = tiny
    for cal in ([], None):
        with pytest.raises(ValueError, match="calibration is empty"):
            getattr(lp, builder)(model, x, cal)


def test_calibration_of_another_shape_raises(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"calibration input 0 has shape \(1, 3, 8, 8\)"):
        lp.ort_int8(model, x, [torch.zeros(1, 3, 8, 8)])


@pytest.mark.parametrize("module,builder,message", [
    ("torchao", "pt2e_int8", "needs torchao"),
    ("onnxruntime", "ort_int8", "needs onnx and onnxruntime.*missing: onnxruntime"),
])
def test_missing_optional_dependency_is_named(tiny, monkeypatch, module, builder, message):
    model, x = tiny
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=message) as e:
        getattr(lp, builder)(model, x, [x])
    assert e.value.name == module


def test_missing_onednn_is_named(tiny, monkeypatch):
    model, x = tiny
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="oneDNN"):
        lp.torch_bf16(model, x)
