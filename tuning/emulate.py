"""An emulated aarch64 TVM RPC device, the run-time side: is one provisioned here, and the command that runs
its Python (Debian's arm64 Python and the aarch64 TVM runtime) under qemu-user.

Timings measured on it are those of an emulator on this machine: they say nothing about ARM speed and
are labelled emulated (``CompileConfig(emulated=True)``, ``latency_emulated`` in manifests).

Provisioning (downloading the packages and wheels: the only part that uses the network) is the CI's,
not agd's: ``python3 tools/arm64_emulator.py setup DIR``. It leaves ``DIR/emulate.json``, whose layout
keys (:data:`LAYOUT_KEYS`: the sysroot, the guest interpreter and its ``site`` folder, relative to
``DIR``, and the guest's own environment variables) are all this module reads of ``DIR``. Starting the
RPC server under qemu is :func:`agd.tuning.emulate_server.start_rpc_server`. This module needs neither
TVM nor the network: :func:`agd.tuning.targets.target_status` asks it whether a device can start.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agd.io import AgdError

FORMAT = 2  # of emulate.json; tools/arm64_emulator.py writes the same number
MANIFEST = "emulate.json"
LAYOUT_KEYS = ("sysroot", "interpreter", "site", "guest_env")
DEFAULT_DIR = Path(".cache") / "arm64-emu"  # relative to the repository root
QEMUS = ("qemu-aarch64-static", "qemu-aarch64")
HOST_ENV = ("PATH", "HOME", "LANG", "TMPDIR")  # the host's basics the guest keeps (no PYTHONPATH, LD_LIBRARY_PATH)
SETUP_HINT = "run `python3 tools/arm64_emulator.py setup DIR`"


@dataclass(frozen=True)
class Guest:
    """A provisioned emulator folder, as its manifest lays it out (absolute paths)."""

    root: Path
    sysroot: Path
    interpreter: Path
    site: Path
    env: dict[str, str]


def find_qemu(qemu: str | None = None) -> str | None:
    """Path of the qemu-user aarch64 emulator (``qemu`` if given, else the first of :data:`QEMUS` on PATH)."""
    for name in (qemu,) if qemu else QEMUS:
        found = shutil.which(name)
        if found:
            return found
    return None


def read_guest(emu_dir: Path) -> Guest:
    """The layout of a provisioned ``emu_dir``; AgdError naming the folder when it is missing, of another
    format, or incomplete."""
    root = Path(emu_dir).resolve()
    hint = SETUP_HINT.replace("DIR", str(emu_dir))
    man = root / MANIFEST
    if not man.is_file():
        raise AgdError(f"no aarch64 emulation sysroot in {emu_dir}: {hint}")
    layout = json.loads(man.read_text())
    if layout.get("format") != FORMAT or any(k not in layout for k in LAYOUT_KEYS):
        raise AgdError(f"{emu_dir} was provisioned in format {layout.get('format')} (expected {FORMAT}): {hint}")
    guest = Guest(root, root / layout["sysroot"], root / layout["interpreter"], root / layout["site"],
                  {str(k): str(v) for k, v in layout["guest_env"].items()})
    if not guest.interpreter.exists():
        raise AgdError(f"{emu_dir} is incomplete (no {guest.interpreter}): {hint}")
    return guest


def unavailable_reason(emu_dir: Path, qemu: str | None = None) -> str | None:
    """Why an emulated aarch64 device cannot start from ``emu_dir`` here, or None when it can."""
    if find_qemu(qemu) is None:
        return f"{qemu or QEMUS[0]} not found (apt-get install qemu-user-static)"
    try:
        read_guest(emu_dir)
    except AgdError as e:
        return str(e)
    return None


def guest_env(guest: Guest, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the aarch64 Python: the host's :data:`HOST_ENV` only, its ``site`` folder and
    the variables the manifest gives it."""
    return {**{k: base[k] for k in HOST_ENV if k in base}, "PYTHONPATH": str(guest.site), **guest.env}


def guest_command(qemu: str, guest: Guest) -> list[str]:
    """The command that runs the aarch64 Python under qemu (arguments follow)."""
    return [qemu, "-L", str(guest.sysroot), str(guest.interpreter)]


def write_wrapper(path: Path, command: list[str]) -> Path:
    """A shell script that runs ``command`` with its own arguments appended (the guest's ``sys.executable``)."""
    path.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(c) for c in command) + ' "$@"\n')
    path.chmod(0o755)
    return path
