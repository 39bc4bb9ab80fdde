"""agd.tuning: compile derived generators with Apache TVM per target, tune them, measure latency.

Importing agd.tuning does not import TVM (:mod:`agd.tuning.tvm_env` is the one module that does, and the
modules that compile import it): the target names, their status (``agd info``) and the command line's
defaults below work without it.
"""

from agd.tuning.targets import TARGETS, TargetSpec, resolve_target, target_status

# ``agd compile``'s default trial budget: about 0.7 s a trial on 2 cores (2000 trials tuned the translation
# example in 1414 s), so with export, build, check and timing a first compile ends within 10 minutes, and a
# second one that finds the database filled spends no trials (BENCHMARKS.md, issue 19)
DEFAULT_TRIALS = 512

__all__ = ["DEFAULT_TRIALS", "TARGETS", "TargetSpec", "resolve_target", "target_status"]
