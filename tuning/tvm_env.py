"""The one module that imports Apache TVM (``apache-tvm``, ``apache-tvm-ffi``), and the parts of it agd uses.

Why here and only here: TVM is required to compile, tune and measure (every other module of agd.tuning
that does so imports its TVM names from this module, at the top), but not by agd itself. ``agd info``,
:mod:`agd.backends` and the command line's start import :mod:`agd.tuning` (:mod:`agd.tuning.targets`:
the target names and their status) on machines without TVM, and ``import tvm`` takes seconds (it loads
torch and LLVM). So :mod:`agd.tuning` and :mod:`agd.tuning.targets` do not import this module at their
top; :func:`agd.tuning.targets.target_status` imports it when asked and reports why TVM is unusable.
Where TVM is missing or its native library is broken, importing this module raises one :class:`AgdError`
naming the package and its install command, instead of a traceback from the first module that needed it.
"""

from __future__ import annotations

from agd.io import AgdError

TVM_PINS = "pip install 'apache-tvm==0.27.0.post1' 'apache-tvm-ffi==0.1.14.post1'"

try:
    import tvm
    import tvm_ffi
    from tvm import relax, rpc, s_tir, te, tirx, transform
    from tvm.driver import build as tvm_build
    from tvm.ir.utils import derived_object
    from tvm.relax.expr_functor import PyExprMutator, mutator
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.script import tirx as T
    from tvm.support import cc
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind
except Exception as e:  # an ImportError, or a native library that does not load
    raise AgdError(f"apache-tvm is not usable ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                   f"{TVM_PINS}") from None

__all__ = ["TVM_PINS", "ExportedProgramImporter", "PopenPoolExecutor", "PyExprMutator",
           "RemoveWeightLayoutRewriteBlock", "StatusKind", "T", "TensorIntrin", "cc", "default_export",
           "derived_object", "estimate_tir_flops", "extract_tasks", "extracted_tasks_to_tune_contexts",
           "from_exported_program", "ms", "mutator", "relax", "rpc", "s_tir", "te", "tirx", "transform", "tvm",
           "tvm_build", "tvm_ffi"]
