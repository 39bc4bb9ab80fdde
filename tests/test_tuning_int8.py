"""int8 TVM path (agd.tuning.int8): numerics against a float64 fake-quantized reference, and VNNI in the
disassembly of the built library.

Tolerance. The int8 build computes exactly what the fake-quantized model computes, except that the
activations it rounds to uint8 were computed in float32 (instance norms, ReLUs, the dequantized previous
layer) where the reference computes them in float64: a value within float32 rounding of a .5 boundary
may round to the neighbouring code, one activation LSB (s_a) off, moving each output it reaches by at
most s_a * |w| summed over the taps. Measured here: 1.1e-7 absolute at an output scale of 0.89 (no
flipped code); the bound is 2e-3 of max|reference|, room for a few flipped codes and still 18x under the
quantization error itself (the float model against the fake-quantized one, 3.7 % of the scale here), so the check still tells int8-correct from merely
close to float.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("tvm")

from agd.tuning import int8  # noqa: E402

TOL = 2e-3  # of max|reference|


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


class Net(nn.Module):
    """3x3 (zero pad, 3 input channels: padded to 4), IN, ReLU, 1x1, ReLU, 3x3 reflect-padded, IN,
    ReLU, 1x1 to 3 channels (output channels padded to 16), tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.n1 = nn.InstanceNorm2d(16, affine=True)
        self.c2 = nn.Conv2d(16, 32, 1)
        self.c3 = nn.Conv2d(32, 24, 3, padding=1, padding_mode="reflect")
        self.n3 = nn.InstanceNorm2d(24, affine=True)
        self.c4 = nn.Conv2d(24, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.n1(self.c1(x)))
        x = F.relu(self.c2(x))
        x = F.relu(self.n3(self.c3(x)))
        return torch.tanh(self.c4(x))


def _fake_quant_forward(net: Net, x: torch.Tensor, ranges: list[int8.ActRange]) -> torch.Tensor:
    """The model in float64 with each convolution's input and weight quantized and dequantized as the
    int8 build does (uint8 asymmetric per tensor, int8 symmetric per output channel)."""
    convs = [net.c1, net.c2, net.c3, net.c4]
    quants = [int8.act_quant(r) for r in ranges]
    net64 = Net().double().eval()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    orig = {}

    for conv, conv64, aq in zip(convs, [net64.c1, net64.c2, net64.c3, net64.c4], quants):
        q, s = int8.quantize_weight(conv.weight.detach().numpy())
        w_hat = torch.from_numpy(q.astype("float64")) * torch.from_numpy(s.astype("float64"))[:, None, None, None]
        conv64.weight.data = w_hat
        orig[conv64] = aq

    def pre(m, inputs):
        aq = orig[m]
        sc = float(aq.scale)
        x = inputs[0]
        qx = torch.clamp(torch.floor(x / sc + aq.zero_point + 0.5), 0, 255)  # round half up, as built
        return ((qx - aq.zero_point) * sc,)

    handles = [m.register_forward_pre_hook(pre) for m in orig]
    try:
        with torch.no_grad():
            return net64(x.double())
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from agd.tuning.build import export_library
    from agd.tuning.measure import CompiledModel
    from agd.tuning.targets import resolve_target

    if int8.vnni_reason():  # LLVM aborts the process on a 512-bit vpdpbusd for a CPU without AVX-512
        pytest.skip(int8.vnni_reason())
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial affine norms
        for n in (net.n1, net.n3):
            n.weight.uniform_(0.5, 1.5)
            n.bias.uniform_(-0.3, 0.3)
    calib = [torch.randn(1, 3, 32, 32) for _ in range(4)]
    x = torch.randn(1, 3, 32, 32)
    ranges = int8.calibrate(net, calib + [x])
    prog = int8.to_relax_int8(net, x)
    mod, report = int8.quantize_program(prog, ranges, schedule="vnni")
    spec = resolve_target("x86")
    ex = int8.build_int8(mod, spec)
    lib = export_library(ex, spec, tmp_path_factory.mktemp("int8") / "net.so")
    y = CompiledModel(ex, prog.params, spec)(x.numpy())
    return net, x, ranges, report, torch.from_numpy(y), lib


def test_calibration_order_and_ranges() -> None:
    net = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    r = int8.calibrate(net, x)
    assert len(r) == 4
    assert r[0].lo == pytest.approx(float(x.min())) and r[0].hi == pytest.approx(float(x.max()))
    assert r[1].lo >= 0.0  # after a ReLU
    p = int8.calibrate(net, [x, x], method="percentile", percentile=99.0)
    assert p[0].hi < r[0].hi


def test_every_conv_quantized(built) -> None:
    _, _, _, report, _, _ = built
    assert [c.kernel for c in report] == [(3, 3), (1, 1), (3, 3), (1, 1)]
    assert all(c.quantized for c in report), report


def test_matches_fake_quantized_float64_reference(built) -> None:
    net, x, ranges, _, y, _ = built
    ref = _fake_quant_forward(net, x, ranges)
    scale = float(ref.abs().max())
    err = float((y.double() - ref).abs().max())
    with torch.no_grad():
        quant_err = float((net(x).double() - ref).abs().max())
    assert err <= TOL * scale, f"int8 build vs fake-quantized float64: {err:.3g} (scale {scale:.3g})"
    assert quant_err > 5 * TOL * scale, f"quantization error {quant_err:.3g}: the check cannot tell int8 from float"
    print(f"int8 vs fake-quant float64 {err:.3g}, float vs fake-quant {quant_err:.3g}, scale {scale:.3g}")


@pytest.mark.skipif("avx512_vnni" not in _cpu_flags(), reason="this CPU lacks avx512_vnni (no vpdpbusd to find)")
def test_disassembly_has_vnni(built) -> None:
    *_, lib = built
    counts = int8.disassembly_counts(lib)
    conv_syms = [s for s in counts if s.startswith("conv_u8s8")]
    assert conv_syms, sorted(counts)
    for s in conv_syms:
        assert counts[s]["vpdpbusd"] > 0, (s, counts[s])
    assert counts["total"]["vpmaddubsw"] == 0  # not the pre-VNNI AVX-512BW sequence


def test_arm64_sdot_build_through_rpc_matches_fake_quantized_reference(arm64_rpc, tmp_path) -> None:
    """The aarch64 scheme (s8 activations, four ``sdot`` per 16 x 4 tile), cross-compiled with +dotprod,
    run on the aarch64 RPC device (emulated under qemu here), against the same float64 fake-quantized
    reference as the x86 build; ``sdot`` in the disassembly of every int8 convolution kernel."""
    import shutil

    from agd.tuning.build import export_library
    from agd.tuning.targets import resolve_target

    url, emulated = arm64_rpc
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for n in (net.n1, net.n3):
            n.weight.uniform_(0.5, 1.5)
            n.bias.uniform_(-0.3, 0.3)
    calib = [torch.randn(1, 3, 20, 24) for _ in range(3)]
    x = torch.randn(1, 3, 20, 24)
    b = int8.compile_int8(net, x, calib + [x], resolve_target(url))
    assert b.scheme == "sdot" and "+dotprod" in b.spec.tvm_target["mattr"] and b.n_int8 == 4, b.note
    ref = _fake_quant_forward(net, x, int8.calibrate(net, calib + [x]))
    y = torch.from_numpy(b.run(x.numpy())).double()
    scale = float(ref.abs().max())
    err = float((y - ref).abs().max())
    with torch.no_grad():
        quant_err = float((net(x).double() - ref).abs().max())
    assert err <= TOL * scale, f"aarch64 int8 vs fake-quantized float64: {err:.3g} (scale {scale:.3g})"
    assert quant_err > 5 * TOL * scale
    print(f"{url}{' (emulated)' if emulated else ''}: int8 sdot vs fake-quant float64 {err:.3g}, scale {scale:.3g}")
    if shutil.which("aarch64-linux-gnu-objdump") is None:
        pytest.skip("aarch64-linux-gnu-objdump absent (apt-get install binutils-aarch64-linux-gnu)")
    counts = int8.disassembly_counts(export_library(b.executable, b.spec, tmp_path / "net.so"),
                                     "aarch64-linux-gnu-objdump")
    conv_syms = [s for s in counts if s.startswith("conv_s8s8_sdot")]
    assert len(conv_syms) == 4, sorted(counts)
    for s in conv_syms:
        assert counts[s]["sdot"] > 0 and counts[s]["smlal"] == 0, (s, counts[s])


def test_arm64_int8_refuses_tuning_and_a_device_less_target() -> None:
    from agd.io import AgdError
    from agd.tuning.targets import resolve_target

    net = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(AgdError, match="no MetaSchedule tuning for the aarch64 sdot kernels"):
        int8.compile_int8(net, x, [x], resolve_target("rpc://127.0.0.1:9/k"), database=None, trials=8)
    if resolve_target("arm64").cross_compiler is not None:
        with pytest.raises(AgdError, match="needs an aarch64 device"):
            int8.compile_int8(net, x, [x], resolve_target("arm64"))


def test_range_count_mismatch_is_an_error() -> None:
    from agd.io import AgdError

    net = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    prog = int8.to_relax_int8(net, x)
    with pytest.raises(AgdError, match="calibrated ranges"):
        int8.quantize_program(prog, int8.calibrate(net, x)[:3])


# ------------------------------------------------------------------------------------ whole agd students

# PSNR floors (data range 2, outputs in [-1, 1]) of the int8 build against the float model, seeded random
# init, calibrated on 8 crops of built-in samples, input a crop of a held-out one (chelsea). A seeded random
# SR student's output is small (std about 0.016: no input skip, random weights), so PSNR over the range 2
# says little there; the SNR against the float output's own variance is checked as well. The translation
# student's low SNR is the activation quantization itself, not the build: a float64 fake-quantized model
# (uint8 inputs, int8 weights, as built) scores 8.73 dB against the float one (weights alone 22.3 dB,
# activations alone 8.64 dB) and the build matches that fake-quantized model to 31 dB; percentile
# calibration (99.99) is worse, 2.4 dB. Random-init weights, 20 chained quantized convolutions with
# instance norms: trained students' figures will differ.
STUDENTS = {  # name: (input size, PSNR floor dB, SNR floor dB)
    "translation_r9_small": (64, 20.5, 6.0),  # measured 24.63 dB, SNR 8.72 dB
    "sr_x4_small": (32, 70.0, 30.0),  # measured 75.90 dB, SNR 34.11 dB
}


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float(10 * np.log10(4.0 / mse))


@pytest.fixture(scope="module", params=sorted(STUDENTS))
def student_build(request, tmp_path_factory):
    from agd.arch import Genotype
    from agd.data.samples import sample_images
    from agd.tuning.artifact import load_generator
    from agd.tuning.build import export_library
    from agd.tuning.targets import resolve_target

    if int8.vnni_reason():
        pytest.skip(int8.vnni_reason())
    name = request.param
    size = STUDENTS[name][0]
    g = Genotype.load(f"examples/{name}.json")
    model = load_generator(g, None)
    (_, im), = sample_images(["chelsea"])
    x = (im[None, :3, 100:100 + size, 150:150 + size] * 2 - 1).contiguous()
    calib = int8.sample_calibration(8, (size, size), seed=1, exclude=("chelsea",))
    spec = resolve_target("x86")
    b = int8.compile_int8(model, x, calib, spec)
    lib = export_library(b.executable, spec, tmp_path_factory.mktemp("int8s") / f"{name}.so")
    with torch.no_grad():
        ref = model(x)
    return name, model, x, b, torch.from_numpy(b.run(x.numpy())), ref, lib


def test_student_matches_float(student_build) -> None:
    name, model, x, b, y, ref, _ = student_build
    _, floor, res_floor = STUDENTS[name]
    assert y.shape == ref.shape
    p = _psnr(y, ref)
    rf = ref.double()
    snr = float(10 * torch.log10(rf.var() / ((y.double() - rf) ** 2).mean()))
    msg = f"{name}: int8 vs float PSNR {p:.2f} dB, SNR {snr:.2f} dB (output std {float(rf.std()):.3g})"
    if res_floor is not None:
        assert snr >= res_floor, msg
    print(msg, "|", b.note)
    if floor is not None:
        assert p >= floor, msg


def test_student_report(student_build) -> None:
    name, _, _, b, *_ = student_build
    assert b.n_int8 > 0 and b.n_int8 + b.n_float == len(b.convs)
    assert all(c.why_not.startswith("groups") for c in b.convs if not c.quantized), b.float_reasons()
    assert b.calibration_images == 8 and b.calibration_method == "minmax" and b.tune_report is None
    assert f"{b.n_int8} convs int8" in b.note and "minmax calibration on 8 images" in b.note


@pytest.mark.skipif("avx512_vnni" not in _cpu_flags(), reason="this CPU lacks avx512_vnni (no vpdpbusd to find)")
def test_student_disassembly_has_vnni(student_build) -> None:
    *_, b, _, _, lib = student_build
    counts = int8.disassembly_counts(lib)
    conv_syms = [s for s in counts if s.startswith("conv_u8s8")]
    assert conv_syms, sorted(counts)
    assert all(counts[s]["vpdpbusd"] > 0 for s in conv_syms), {s: counts[s] for s in conv_syms}


def _tiny_inputs():
    from agd.tuning.targets import resolve_target

    net = Net().eval()
    return net, torch.randn(1, 3, 16, 16), resolve_target("x86")


def test_empty_calibration_is_an_error() -> None:
    from agd.io import AgdError

    net, x, spec = _tiny_inputs()
    if int8.vnni_reason():
        pytest.skip(int8.vnni_reason())
    with pytest.raises(AgdError, match="calibration needs at least one image"):
        int8.compile_int8(net, x, [], spec)


def test_no_vnni_is_an_error(monkeypatch) -> None:
    import agd.machine
    from agd.io import AgdError

    net, x, spec = _tiny_inputs()
    real = agd.machine.cpu()
    monkeypatch.setattr(agd.machine, "cpu", lambda: agd.machine.Cpu("Some CPU", frozenset({"avx2", "avx512f"}), 2))
    with pytest.raises(AgdError, match="AVX512-VNNI"):
        int8.compile_int8(net, x, [x], spec)
    assert real.model  # the real one untouched
