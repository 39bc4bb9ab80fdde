"""Low-precision CPU deployments that a user could pick instead of agd's TVM build: the peers of a tuned
float32 TVM module when speed matters more than the last few dB.

Each builder takes the float32 generator and an example input ``x`` (1, C, H, W) and returns
``(f, note)``: ``f(x: torch.Tensor) -> torch.Tensor`` runs one batch and returns float32, ``note`` says in
one line exactly what ``f`` is (precision, quantization scheme, runtime). The caller's model is never
modified (each builder works on a copy). The quantized peers export the graph at ``x``'s shape, so ``f``
and every calibration tensor take inputs of that shape.

- :func:`torch_bf16`: bfloat16 autocast on the CPU with channels_last, eager or ``torch.compile``.
- :func:`pt2e_int8`: PT2E static int8 (torchao's X86InductorQuantizer) lowered by inductor.
- :func:`ort_int8`: ONNX Runtime static int8 (QDQ) on the CPU execution provider.

:func:`psnr_to` scores a peer's output against the float32 output.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch._inductor.config as inductor_config

Peer = tuple[Callable[[torch.Tensor], torch.Tensor], str]

# torchao's PT2E quantizers; 0.18.0 is what requirements.txt pins (torch 2.13 has no torch.ao PT2E any more)
TORCHAO_HINT = "pip install torchao==0.18.0"


def psnr_to(ref: np.ndarray, out: np.ndarray, data_range: float = 2.0) -> float:
    """PSNR of ``out`` against ``ref`` in dB (``data_range``: the value range, 2 for [-1, 1] images);
    ``inf`` when they are identical."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"psnr_to: shapes differ ({ref.shape} vs {out.shape})")
    mse = float(np.mean((ref - out) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mse))


def _check_x(x: torch.Tensor, who: str) -> None:
    if x.dim() != 4 or x.dtype != torch.float32:
        raise ValueError(f"{who}: the example input must be a float32 (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")


def _calibration(calibration: Sequence[torch.Tensor] | None, x: torch.Tensor, who: str) -> list[torch.Tensor]:
    """The calibration batches as float32 tensors of ``x``'s shape ((C, H, W) ones get a batch axis)."""
    if calibration is None or len(calibration) == 0:
        raise ValueError(f"{who}: calibration is empty; static int8 needs at least one calibration input "
                         f"of shape {tuple(x.shape)} (e.g. crops of real images mapped into the model's input range)")
    out = []
    for i, c in enumerate(calibration):
        c = torch.as_tensor(c).float()
        if c.dim() == 3:
            c = c.unsqueeze(0)
        if tuple(c.shape) != tuple(x.shape):
            raise ValueError(f"{who}: calibration input {i} has shape {tuple(c.shape)}; the graph is exported at "
                             f"the example input's shape {tuple(x.shape)}, so every calibration input needs that shape")
        out.append(c.contiguous())
    return out


# --------------------------------------------------------------------------------------------- bf16


def torch_bf16(model: torch.nn.Module, x: torch.Tensor, compiled: bool = False) -> Peer:
    """bfloat16 autocast on the CPU (convolutions, matmuls in bf16; autocast's fp32 list stays fp32) with
    the weights and the input in channels_last; eager, or the whole call (autocast included) under
    ``torch.compile`` (inductor, default mode; compiled here, at ``x``)."""
    _check_x(x, "torch_bf16")
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError(f"torch_bf16: torch {torch.__version__} was built without oneDNN (mkldnn), "
                           "which its CPU bf16 convolutions need")
    m = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)

    def fwd(inp: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(inp.contiguous(memory_format=torch.channels_last))
        return y.float()

    run = torch.compile(fwd) if compiled else fwd
    if compiled:
        with torch.no_grad():
            run(x)  # compile outside any timing

    def f(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return run(inp)

    note = ("bf16 autocast (CPU), channels_last, "
            + ("torch.compile inductor default mode" if compiled else "eager")
            + f"; torch {torch.__version__}")
    return f, note


# --------------------------------------------------------------------------------------------- PT2E int8


def _torchao_x86():
    """torchao's PT2E pieces and version; ImportError naming torchao when it is missing. torchao is optional
    (only this peer needs it), so this is the one place it is imported, on first use. Importing torchao's x86
    quantizer sets ``torch._inductor.config.pre_grad_custom_pass`` process-wide; that is undone here and the
    pass is set only while a quantized model compiles (see :func:`pt2e_int8`)."""
    before = inductor_config.pre_grad_custom_pass
    # the wheel's CUDA kernels (.so) do not load with a CPU torch (expected: the PT2E path needs none of them),
    # and torch's pytree warns about an Enum torchao registers; both are logged at import, silenced here
    logs = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        import torchao
        from torchao.quantization.pt2e.inductor_passes.x86 import quant_lift_up
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        if e.name is not None and not e.name.startswith("torchao"):
            raise
        raise ImportError(f"pt2e_int8 needs torchao's PT2E quantization (torch {torch.__version__} has no "
                          f"torch.ao.quantization.quantize_pt2e): {TORCHAO_HINT} ({e})", name="torchao") from None
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)
        inductor_config.pre_grad_custom_pass = before
    return prepare_pt2e, convert_pt2e, xiq, quant_lift_up, torchao.__version__


def _conv_subclasses_as_conv2d(gm: torch.fx.GraphModule, model: torch.nn.Module) -> int:
    """Make the exported graph's Conv2d subclasses (agd's ElasticConv2d) read as ``nn.Conv2d``; returns how
    many nodes it relabelled. The X86InductorQuantizer finds convolutions by the module class that export
    records per node (``nn_module_stack``, as a dotted class name after a non-strict export) and compares it
    with ``torch.nn.modules.conv.Conv2d`` exactly, so it would leave every subclass unquantized: a
    "quantized" model that runs float32. The class is only a label here; the graph's ops are unchanged."""
    conv2d = f"{torch.nn.Conv2d.__module__}.{torch.nn.Conv2d.__qualname__}"
    relabelled = 0
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        try:
            mod = model.get_submodule(fqn)
        except AttributeError:
            continue
        if isinstance(mod, torch.nn.Conv2d) and type(mod) is not torch.nn.Conv2d:
            stack[key] = (fqn, conv2d if isinstance(cls, str) else torch.nn.Conv2d)
            relabelled += 1
    return relabelled


def _pt2e_compile_context(quant_lift_up):
    """Inductor settings for the int8 path, set only inside the block: freezing (constant-folds the weights
    so that the dequantize -> conv -> quantize patterns become oneDNN int8 convolutions with prepacked
    weights; without it inductor runs dequantize + float32 convolutions) and torchao's pre-grad pass that
    lifts quantize ops above view-like ops."""
    return inductor_config.patch(freezing=True, pre_grad_custom_pass=quant_lift_up)


def pt2e_int8(model: torch.nn.Module, x: torch.Tensor, calibration: Sequence[torch.Tensor], *,
              freezing: bool = True) -> Peer:
    """PT2E static int8: ``torch.export`` at ``x``'s shape, torchao's X86InductorQuantizer with its default
    config (int8 weights symmetric per output channel, uint8 activations per tensor from a histogram
    observer), ``prepare_pt2e``, one forward per calibration input, ``convert_pt2e``, then ``torch.compile``
    (inductor) with ``torch._inductor.config.freezing = True`` set only while compiling and calling (the
    int8 lowering needs it: ``freezing=False`` is there only to measure that)."""
    _check_x(x, "pt2e_int8")
    cal = _calibration(calibration, x, "pt2e_int8")
    prepare_pt2e, convert_pt2e, xiq, quant_lift_up, torchao_version = _torchao_x86()
    m = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = torch.export.export(m, (x,), strict=False).module()
        _conv_subclasses_as_conv2d(gm, m)
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(gm, quantizer)
        with torch.no_grad():
            for c in cal:
                prepared(c)
        converted = convert_pt2e(prepared)
    n_int8 = sum(1 for n in converted.graph.nodes
                 if n.op == "call_function" and "dequantize_per_channel" in str(n.target))
    if n_int8 == 0:
        raise RuntimeError("pt2e_int8: the X86InductorQuantizer quantized no convolution or linear layer of this "
                           "model (nothing to run in int8)")
    ctx = (lambda: _pt2e_compile_context(quant_lift_up)) if freezing else contextlib.nullcontext
    run = torch.compile(converted)
    with torch.no_grad(), ctx():
        run(x)  # compile outside any timing

    def f(inp: torch.Tensor) -> torch.Tensor:
        # a recompile (a failed guard) must see the same settings, so every call runs inside the context
        with torch.no_grad(), ctx():
            return run(inp)

    n_float = sum(1 for n in converted.graph.nodes if n.op == "call_function" and "conv_transpose" in str(n.target))
    note = (f"PT2E static int8, torchao {torchao_version} X86InductorQuantizer default config (int8 weights "
            f"symmetric per-channel, uint8 activations per-tensor, histogram observer, {len(cal)} calibration "
            f"inputs): {n_int8} int8 conv/linear layers"
            + (f", {n_float} ConvTranspose2d left float32 (the quantizer has no pattern for it)" if n_float else "")
            + f"; torch.compile inductor, freezing {'on' if freezing else 'off'}; torch {torch.__version__}")
    return f, note


# --------------------------------------------------------------------------------------------- ORT int8

# Calibration method, chosen on the translation example (examples/translation_r9_small.json, random init,
# 256x256 input torch.rand * 2 - 1, 8 random 256x256 crops of the built-in samples astronaut, rocket,
# motorcycle, camera mapped into [-1, 1]; QDQ, u8 activations, s8 symmetric per-channel weights), PSNR to
# the fp32 eager output: MinMax 22.7 dB, Percentile (99.999, ORT's default) 24.3 dB (at 128x128: 22.4 vs
# 23.9; the SR example at 256x256: 70.2 vs 70.8). Percentile clips the rare extreme activations that MinMax
# spreads each tensor's 256 levels over; the latency is the same (same graph, other scales). So Percentile
# is the default; ``calibrate_method`` picks the other.
ORT_CALIBRATE_METHOD = "Percentile"


class _Reader:
    """An onnxruntime CalibrationDataReader over a list of input arrays; ``set_range`` and ``len`` let
    ``quantize_static`` calibrate a window at a time (its ``CalibStridedMinMax`` option, used by
    :func:`ort_int8`)."""

    def __init__(self, arrays: list[np.ndarray], name: str) -> None:
        self.arrays, self.name = arrays, name
        self.set_range(0, len(arrays))

    def __len__(self) -> int:
        return len(self.arrays)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self.arrays))

    def get_next(self):
        if self.i >= self.end:
            return None
        self.i += 1
        return {self.name: self.arrays[self.i - 1]}

    def rewind(self) -> None:
        self.set_range(0, len(self.arrays))


def _onnx_bytes(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    """ONNX export as :func:`agd.tuning.compare.ort_session` does it (TorchScript exporter, opset 17)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    return buf.getvalue()


def onnxruntime_modules():
    """(onnxruntime, onnxruntime.quantization); ImportError naming the missing package. onnx and onnxruntime
    are optional (the ``deploy`` extra: the ONNX Runtime rows of comparisons, latency tables and this int8
    peer), so this is the one place agd imports them, on first use."""
    try:
        import onnx  # noqa: F401  (quantize_static loads and rewrites the model with it)
        import onnxruntime as ort
        import onnxruntime.quantization as quantization
    except ImportError as e:
        raise ImportError(f"ONNX Runtime support needs onnx and onnxruntime (pip install onnx onnxruntime; missing: {e.name})",
                          name=e.name) from None
    return ort, quantization


@contextlib.contextmanager
def _quiet_ort_quantization():
    """onnxruntime.quantization prints (Percentile's histogram settings) and warns through the root logger
    (pre-processing advice; InstanceNormalization's constant scale and bias, which it leaves unquantized);
    a root logger without handlers would also get one added for good by ``logging.warning``. Silenced for
    the block, everything restored after."""
    root = logging.getLogger()
    level, guard = root.level, logging.NullHandler()
    root.addHandler(guard)
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        root.removeHandler(guard)


def ort_int8(model: torch.nn.Module, x: torch.Tensor, calibration: Sequence[torch.Tensor], threads: int | None = None,
             *, calibrate_method: str = ORT_CALIBRATE_METHOD) -> Peer:
    """ONNX Runtime static int8: the ONNX export of :func:`agd.tuning.compare.ort_session`, then
    ``onnxruntime.quantization.quantize_static`` in QDQ format with int8 weights symmetric per output
    channel and uint8 (asymmetric, per-tensor) activations calibrated on ``calibration`` (``MinMax`` or
    ``Percentile``); run by an InferenceSession on the CPU execution provider (ORT_ENABLE_ALL,
    ``threads`` intra-op threads, library default when None).

    Activations are QUInt8, not QInt8: on x86 ORT's int8 convolutions and matmuls (MLAS) are u8 x s8
    kernels, the operand order of VNNI's VPDPBUSD (unsigned bytes times signed bytes), and
    ``quantize_static``'s own guidance for VNNI CPUs is QUInt8 activations, QInt8 weights, reduce_range off
    (VNNI accumulates in int32 without the 16-bit saturation of the pre-VNNI VPMADDUBSW path). QInt8
    activations measured no faster on the Zen 5 dev machine (translation example, 256x256, 2 threads)."""
    _check_x(x, "ort_int8")
    cal = _calibration(calibration, x, "ort_int8")
    ort, oq = onnxruntime_modules()
    methods = {"minmax": oq.CalibrationMethod.MinMax, "percentile": oq.CalibrationMethod.Percentile}
    if calibrate_method.lower() not in methods:
        raise ValueError(f"ort_int8: calibrate_method {calibrate_method!r} is not one of MinMax, Percentile")
    method = methods[calibrate_method.lower()]
    onnx_model = _onnx_bytes(copy.deepcopy(model).eval(), x)
    with tempfile.TemporaryDirectory(prefix="agd-ort-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_model)
        reader = _Reader([c.numpy() for c in cal], "x")
        with _quiet_ort_quantization():
            oq.quantize_static(str(src), str(dst), reader, quant_format=oq.QuantFormat.QDQ, per_channel=True,
                               reduce_range=False, activation_type=oq.QuantType.QUInt8,
                               weight_type=oq.QuantType.QInt8, calibrate_method=method,
                               extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                              # one calibration input per inference: the calibrator keeps every
                                              # intermediate tensor of the inputs it runs together (the SR
                                              # example at 256x256 needed > 24 GB for 8 inputs at once); the
                                              # ranges (MinMax) or histograms (Percentile) merge across runs
                                              "CalibStridedMinMax": 1})
        quantized = dst.read_bytes()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(quantized, so, providers=["CPUExecutionProvider"])

    def f(inp: torch.Tensor) -> torch.Tensor:
        y = sess.run(None, {"x": np.ascontiguousarray(inp.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(y)

    name = {"minmax": "MinMax", "percentile": "Percentile"}[calibrate_method.lower()]
    note = (f"onnxruntime {ort.__version__} static int8, QDQ, u8 activations per-tensor / s8 weights symmetric "
            f"per-channel, {name} calibration on {len(cal)} inputs, CPUExecutionProvider, ORT_ENABLE_ALL"
            + (f", {threads} threads" if threads else ""))
    return f, note
