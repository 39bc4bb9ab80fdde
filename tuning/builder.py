"""MetaSchedule's builder for agd: candidates built in worker processes that outlive one batch.

TVM's ``LocalBuilder`` starts a new pool of worker processes for every batch of candidates (it restarts
them against a memory leak of long-lived workers). Each worker then imports TVM, which imports torch:
7.6 s here (2-core AMD EPYC without AVX-512, BENCHMARKS.md), so a tuning round of one candidate spent
7 s starting its builder and well under one building. :class:`PersistentBuilder` keeps its workers and
recycles each after :data:`BUILDS_PER_WORKER` builds, which bounds that leak the way TVM's own pool
option (``maximum_process_uses``) does; a worker killed by a timeout is replaced on the next build.

:func:`build_candidate` is the build function: TVM's default build without ``import
tvm.s_tir.tensor_intrin`` (30-48 s per worker here, more than the default build timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agd.tuning.tvm_env import (
    PopenPoolExecutor,
    RemoveWeightLayoutRewriteBlock,
    StatusKind,
    default_export,
    derived_object,
    ms,
    tvm_build,
)

# builds before a worker process is replaced (TVM restarts its builder's workers after every batch against
# a leak of long-lived workers; 64 builds is four rounds of 16 candidates)
BUILDS_PER_WORKER = 64


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule builder function: TVM's default build without importing ``tvm.s_tir.tensor_intrin``."""
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def build_and_export(mod: Any, target: Any) -> str:
    """Run in a worker: build one candidate and export it to a file; its path."""
    return default_export(build_candidate(mod, target, None))


@derived_object
class PersistentBuilder(ms.builder.PyBuilder):
    """A MetaSchedule builder over ``max_workers`` long-lived worker processes (see the module's text).

    Parameters are those of TVM's ``LocalBuilder`` that agd sets: ``timeout_s`` per build (the worker is
    killed and replaced past it), ``initializer`` run once in each new worker (e.g. a memory cap), and
    ``builds_per_worker`` before a worker is replaced. Call :meth:`close` when done (a finalizer does it
    too)."""

    def __init__(self, timeout_s: float, initializer: Callable[[], None] | None = None,
                 max_workers: int | None = None, builds_per_worker: int = BUILDS_PER_WORKER) -> None:
        super().__init__()
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_s, initializer=initializer,
                                      maximum_process_uses=builds_per_worker)
        self.timeout_s = timeout_s

    def build(self, build_inputs: list[Any]) -> list[Any]:
        results = []
        jobs = [(b.mod, b.target) for b in build_inputs]
        for r in self.pool.map_with_error_catching(lambda job: build_and_export(*job), jobs):
            if r.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(r.value, None))
            elif r.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(None, f"agd builder: timeout, killed after {self.timeout_s} s"))
            else:
                results.append(ms.builder.BuilderResult(None, f"agd builder: an exception occurred\n{r.value}"))
        return results

    def close(self) -> None:
        """Stop the worker processes."""
        self.pool.shutdown()
