"""agd.kernels: Triton kernels for the supernet's mixed layers.

Kernels run on CUDA devices; on the CPU they run only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is for tests, not speed. ``AGD_DISABLE_TRITON=1`` forces the PyTorch
references everywhere.
"""

from agd.kernels.status import MIN_INTERPRETER_VERSION, triton_status

__all__ = ["MIN_INTERPRETER_VERSION", "triton_status"]
