"""Every compiled agd operator, one module per op family.

Each op has: a schema (``torch.library``), a fake/meta implementation beside it (so torch.compile and
torch.export see one op with known output shapes), a plain PyTorch reference, and a Python entry point that
dispatches to the compiled kernel when it can run and to the reference otherwise.

- :mod:`agd.ops.library`: the ``agd`` namespace, the one loader of agd/_C*.so and agd/_C_cuda*.so
  (``AGD_DISABLE_CPP=1`` switches both off) and the status dispatch and ``agd info`` share;
- :mod:`agd.ops.activations`: the activation table and its reference forward / derivative;
- :mod:`agd.ops.resampling`: separable resampling (agd.data.resize);
- :mod:`agd.ops.blocks`, :mod:`agd.ops.fused`: the block ops of derived generators (agd.arch.fast);
- :mod:`agd.ops.mixed`: the supernet's mixed-layer sum and fused epilogue (agd.search.supernet), with its
  Triton dispatch;
- :mod:`agd.ops.onednn`: whether oneDNN's fused convolutions run here.

Importing this package registers every op; it loads no compiled library.
"""

from agd.ops.activations import ACT_CODES, ACTIVATIONS, EPILOGUE_ACTS, ONEDNN_ACTS, Activation, act_of
from agd.ops.blocks import (
                            blocks_backend,
                            dwconv3x3,
                            dwconv3x3_backward_reference,
                            dwconv3x3_reference,
                            norm_act_residual,
                            norm_act_residual_backward_reference,
                            norm_act_residual_reference,
)
from agd.ops.fused import (
                            BLOCK_GEMM_BACKENDS,
                            CONV_NARROW_MAX_OUT,
                            block_gemm_name,
                            block_gemm_reference,
                            conv_narrow,
                            conv_narrow_reference,
                            dws_block,
                            dws_block_reference,
)
from agd.ops.library import (
                            CUDA_NOT_BUILT_REASON,
                            DISABLE_ENV,
                            NOT_BUILT_REASON,
                            NativeLibrary,
                            cpp_ops_status,
                            cpp_status,
                            cuda_ops_status,
                            find_cpu_library,
                            has_kernel,
)
from agd.ops.mixed import (
                            EPILOGUE_BACKENDS,
                            EpilogueCandidate,
                            _pack_candidates,
                            mixed_epilogue,
                            mixed_epilogue_backend,
                            mixed_epilogue_reference,
                            mixed_epilogue_status,
                            mixed_sum,
                            mixed_sum_reference,
)
from agd.ops.onednn import onednn_reason, onednn_status
from agd.ops.resampling import resample, resample_backend, resample_reference

# _pack_candidates: tests/test_kernels.py checks the op's packing of the candidates
__all__ = [
    "ACTIVATIONS", "ACT_CODES", "Activation", "BLOCK_GEMM_BACKENDS", "CONV_NARROW_MAX_OUT", "CUDA_NOT_BUILT_REASON",
    "DISABLE_ENV", "EPILOGUE_ACTS", "EPILOGUE_BACKENDS", "EpilogueCandidate", "NOT_BUILT_REASON", "NativeLibrary",
    "ONEDNN_ACTS", "_pack_candidates", "act_of", "block_gemm_name", "block_gemm_reference", "blocks_backend",
    "conv_narrow", "conv_narrow_reference", "cpp_ops_status", "cpp_status", "cuda_ops_status", "dwconv3x3",
    "dwconv3x3_backward_reference", "dwconv3x3_reference", "dws_block", "dws_block_reference", "find_cpu_library",
    "has_kernel", "mixed_epilogue", "mixed_epilogue_backend", "mixed_epilogue_reference", "mixed_epilogue_status",
    "mixed_sum", "mixed_sum_reference", "norm_act_residual", "norm_act_residual_backward_reference",
    "norm_act_residual_reference", "onednn_reason", "onednn_status", "resample", "resample_backend",
    "resample_reference",
]
