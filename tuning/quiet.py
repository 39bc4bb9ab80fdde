"""TVM's native log lines that say nothing to a user, kept off the terminal.

TVM's C++ library logs straight to file descriptor 2, so ``warnings`` and ``logging`` cannot catch it:
an untuned ``agd compile`` of the translation example printed dozens of identical lines such as
``[06:40:44] /project/include/tvm/topi/transform.h:1261: Warning: Fast mode segfaults when there are
out-of-bounds indices. Make sure input indices are in bound`` (every reflect-pad gather; agd's gathers
are in bounds by construction) and MetaSchedule's ``Warning: Scope Saving ...``. :func:`quiet_native_logs`
routes fd 2 through a pipe for the duration of a block and forwards every line except those of
:data:`KNOWN_NOISE`, counting what it dropped. ``AGD_TVM_VERBOSE=1`` turns the filter off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

# (name, pattern) of native log lines that are dropped; anything else is forwarded unchanged
KNOWN_NOISE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("take fast mode", re.compile(r"Warning: Fast mode segfaults when there are out-of-bounds indices")),
    ("scope saving", re.compile(r"Warning: Scope Saving")),
)


@dataclass
class Filtered:
    """What :func:`quiet_native_logs` dropped, by kind."""

    dropped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        if not self.dropped:
            return ""
        kinds = ", ".join(f"{n} x {k!r}" for k, n in self.dropped.most_common())
        return f"{sum(self.dropped.values())} TVM log lines filtered ({kinds}; AGD_TVM_VERBOSE=1 shows them)"


def noise_kind(line: str) -> str | None:
    for name, pat in KNOWN_NOISE:
        if pat.search(line):
            return name
    return None


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[Filtered]:
    """Within the block, native writes to fd 2 pass through a filter that drops :data:`KNOWN_NOISE`.
    Python's own ``sys.stderr`` keeps working (it writes to the same filtered descriptor)."""
    result = Filtered()
    if os.environ.get("AGD_TVM_VERBOSE") == "1":
        yield result
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedded interpreter): nothing to filter
        yield result
        return
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def pump() -> None:
        with os.fdopen(r, "rb") as src:
            for raw in src:
                kind = noise_kind(raw.decode("utf-8", "replace"))
                if kind:
                    result.dropped[kind] += 1
                else:
                    with contextlib.suppress(OSError):
                        os.write(saved, raw)

    t = threading.Thread(target=pump, name="agd-tvm-log-filter", daemon=True)
    t.start()
    try:
        yield result
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes our write end of the pipe: the pump reads to EOF and stops
        t.join(timeout=5)
        if not t.is_alive():  # else a child process (a tuning worker) still holds the pipe: the pump
            os.close(saved)  # keeps forwarding its lines to the saved descriptor, left open
