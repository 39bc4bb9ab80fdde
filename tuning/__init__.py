"""agd.tuning: compile derived generators with Apache TVM per target, tune them, measure latency.

TVM is imported lazily (importing agd.tuning does not import tvm).
"""

from agd.tuning.targets import TARGETS, TargetSpec, resolve_target, target_status

__all__ = ["TARGETS", "TargetSpec", "resolve_target", "target_status"]
