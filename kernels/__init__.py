"""agd.kernels: Triton kernels for the supernet's mixed layers.

Kernels run on CUDA devices; on the CPU they run only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is for tests, not speed. ``AGD_DISABLE_TRITON=1`` forces the PyTorch
references everywhere.

This package holds the Triton kernels and their status only:
- ``agd.kernels.status``: whether the kernels can run here, and why not (the one place that probes triton);
- ``agd.kernels.mixed_epilogue``: the fused mixed-layer epilogue (forward and backward kernels), used by the
  op ``agd::mixed_epilogue`` of :mod:`agd.ops.mixed`; imported on demand, never by this package (importing
  it imports triton).
Their benchmark workloads (``agd bench kernels``) live in :mod:`agd.bench.kernels`.
"""

from agd.kernels.status import MIN_INTERPRETER_VERSION, triton_status

__all__ = ["MIN_INTERPRETER_VERSION", "triton_status"]
