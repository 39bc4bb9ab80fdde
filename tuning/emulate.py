"""An emulated aarch64 TVM RPC device: Debian's arm64 Python and the aarch64 TVM runtime under qemu-user.

Timings measured on it are those of an emulator on this machine: they say nothing about ARM speed and
are labelled emulated (``CompileConfig(emulated=True)``, ``latency_emulated`` in manifests).

Two halves:

* provisioning (the install step; the only part that uses the network): ``setup(DIR)``, also
  ``python3 tuning/emulate.py setup DIR`` (standard library only, runs before agd is installed) or
  ``python -m agd.tuning.emulate setup DIR``. It downloads Debian's arm64 ``python3.11-minimal`` and the
  libraries it loads (``apt-get download`` with a private package list, so the system's apt state is
  untouched, unpacked with ``dpkg -x`` into ``DIR/sysroot``) and the aarch64 wheels of apache-tvm,
  apache-tvm-ffi and what TVM's RPC server imports (``pip download --platform``, unzipped into
  ``DIR/site``), then checks the interpreter imports TVM under qemu. Idempotent; built in ``DIR.tmp``
  and renamed into place.
* run time (no network): ``start_rpc_server(DIR, tracker_host, tracker_port, key)`` launches
  ``python -m tvm.exec.rpc_server`` under ``qemu-aarch64-static -L DIR/sysroot`` with
  ``TVM_USE_RUNTIME_LIB=1``, with ``sys.executable`` pointing at a wrapper that re-enters qemu (the
  server starts its worker with ``sys.executable``; binfmt_misc need not be registered), waits until the
  key is registered with the tracker, and kills the whole process group when closed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

try:
    from agd.io import AgdError
except ImportError:  # run as a plain script (`python3 tuning/emulate.py setup DIR`) before agd is installed
    class AgdError(Exception):  # type: ignore[no-redef]
        """An error the command line prints on one line."""

FORMAT = 1
DEFAULT_DIR = Path(".cache") / "arm64-emu"  # relative to the repository root
PYTHON = "3.11"  # Debian 12's python3; the wheels are chosen for this version
# Debian 12 (bookworm) arm64 packages: the interpreter, its standard library and the shared libraries
# they and the TVM runtime load (optional stdlib modules such as sqlite3 or readline are left out)
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
        "libstdc++6", "zlib1g", "libexpat1", "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libuuid1",
        "libcrypt1")
# what `python -m tvm.exec.rpc_server` imports; versions are pinned from requirements.txt when it pins them
WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions", "psutil", "cloudpickle")
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_24_aarch64",
             "manylinux_2_17_aarch64", "manylinux2014_aarch64")
UNUSED_FILES = ("tvm/lib/libtvm_compiler.so",)  # 230 MB that TVM_USE_RUNTIME_LIB=1 never loads
QEMUS = ("qemu-aarch64-static", "qemu-aarch64")
SETUP_HINT = "run `python -m agd.tuning.emulate setup DIR` (or `python3 tuning/emulate.py setup DIR`)"


# ------------------------------------------------------------------------------------------ layout
def sysroot(emu_dir: Path) -> Path:
    return Path(emu_dir) / "sysroot"


def site_dir(emu_dir: Path) -> Path:
    return Path(emu_dir) / "site"


def guest_python(emu_dir: Path, python: str = PYTHON) -> Path:
    return sysroot(emu_dir) / "usr" / "bin" / f"python{python}"


def manifest_path(emu_dir: Path) -> Path:
    return Path(emu_dir) / "emulate.json"


def find_qemu(qemu: str | None = None) -> str | None:
    """Path of the qemu-user aarch64 emulator (``qemu`` if given, else the first of :data:`QEMUS` on PATH)."""
    for name in (qemu,) if qemu else QEMUS:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable_reason(emu_dir: Path, qemu: str | None = None) -> str | None:
    """Why an emulated aarch64 device cannot start from ``emu_dir`` here, or None when it can."""
    if find_qemu(qemu) is None:
        return f"{qemu or QEMUS[0]} not found (apt-get install qemu-user-static)"
    man = manifest_path(emu_dir)
    if not man.is_file():
        return f"no aarch64 emulation sysroot in {emu_dir}: {SETUP_HINT.replace('DIR', str(emu_dir))}"
    python = json.loads(man.read_text()).get("python", PYTHON)
    if not guest_python(emu_dir, python).exists():
        return f"{emu_dir} is incomplete (no {guest_python(emu_dir, python)}): {SETUP_HINT.replace('DIR', str(emu_dir))}"
    return None


# ------------------------------------------------------------------------------------------ guest command
def guest_env(emu_dir: Path, base: dict[str, str]) -> dict[str, str]:
    """The environment of the aarch64 Python: the host's basics only (no host PYTHONPATH, LD_LIBRARY_PATH)."""
    keep = {k: base[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in base}
    return {**keep, "PYTHONPATH": str(site_dir(emu_dir)), "PYTHONNOUSERSITE": "1", "TVM_USE_RUNTIME_LIB": "1"}


def guest_command(qemu: str, emu_dir: Path, python: str = PYTHON) -> list[str]:
    """The command that runs the aarch64 Python under qemu (arguments follow)."""
    root = sysroot(emu_dir).resolve()
    return [qemu, "-L", str(root), str(guest_python(root.parent, python))]


def write_wrapper(path: Path, command: list[str]) -> Path:
    """A shell script that runs ``command`` with its own arguments appended (the guest's ``sys.executable``)."""
    path.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(c) for c in command) + ' "$@"\n')
    path.chmod(0o755)
    return path


# the server's entry point, with sys.executable replaced by the wrapper (argv[1]) before TVM starts workers
_BOOT = ("import runpy, sys; sys.executable = sys.argv[1]; sys.argv = [sys.argv[0]] + sys.argv[2:]; "
         "runpy.run_module('tvm.exec.rpc_server', run_name='__main__', alter_sys=True)")


# ------------------------------------------------------------------------------------------ provisioning
def wheel_specs(requirements: Path | None) -> list[str]:
    """``name==version`` for each of :data:`WHEELS` pinned in ``requirements``, the bare name otherwise."""
    norm = lambda s: s.strip().lower().replace("_", "-")  # noqa: E731
    pins: dict[str, str] = {}
    if requirements is not None and requirements.is_file():
        for line in requirements.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[norm(name)] = version.strip()
    return [f"{w}=={pins[norm(w)]}" if norm(w) in pins else w for w in WHEELS]


def _run(cmd: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout_s: float = 900) -> str:
    try:
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise AgdError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise AgdError(f"{what}: `{' '.join(cmd[:3])} ...` took over {timeout_s:g} s") from None
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        raise AgdError(f"{what} failed (exit {res.returncode}): {lines[-1].strip() if lines else '(no output)'}")
    return res.stdout


def _apt_options(state: Path) -> list[str]:
    """apt-get options for a private arm64 package list under ``state`` (the system's apt state is untouched;
    the system's sources and keyrings are used)."""
    return ["-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Dir::State::status=/dev/null", "-o", "APT::Architecture=arm64",
            "-o", "APT::Architectures=arm64", "-o", "Acquire::Languages=none", "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root", "-q"]


def fetch_debs(packages: tuple[str, ...], sysroot_dir: Path, work: Path) -> list[str]:
    """Download the arm64 ``packages`` and unpack them into ``sysroot_dir``; returns the .deb names."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise AgdError(f"{tool} not found: provisioning the aarch64 sysroot needs a Debian host")
    state, debs = work / "apt", work / "debs"
    for d in (state / "lists" / "partial", state / "cache" / "archives" / "partial", debs, sysroot_dir):
        d.mkdir(parents=True, exist_ok=True)
    opts = _apt_options(state)
    _run(["apt-get", *opts, "update"], "apt-get update (arm64 package list)")
    _run(["apt-get", *opts, "download", *packages], "apt-get download (arm64 packages)", cwd=debs)
    names = sorted(p.name for p in debs.glob("*.deb"))
    for name in names:
        _run(["dpkg-deb", "-x", str(debs / name), str(sysroot_dir)], f"dpkg-deb -x {name}")
    return names


def fetch_wheels(specs: list[str], site: Path, work: Path, python: str = PYTHON) -> list[str]:
    """Download the aarch64 wheels of ``specs`` for CPython ``python`` and unzip them into ``site``."""
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
          "--only-binary=:all:", *platforms, "--python-version", python, "--dest", str(wheels), *specs],
         "pip download (aarch64 wheels)", cwd=wheels)
    names = sorted(p.name for p in wheels.glob("*.whl"))
    for name in names:
        with zipfile.ZipFile(wheels / name) as z:
            z.extractall(site)
    for rel in UNUSED_FILES:
        (site / rel).unlink(missing_ok=True)
    return names


def check_guest(emu_dir: Path, qemu: str, python: str = PYTHON) -> str:
    """Import the RPC server's modules in the aarch64 Python under qemu (which also byte-compiles them);
    returns the TVM version it reports."""
    code = "import numpy, psutil, cloudpickle, tvm, tvm.rpc.server; print(tvm.__version__)"
    out = _run([*guest_command(qemu, emu_dir, python), "-c", code], "aarch64 Python under qemu: import tvm",
               env=guest_env(emu_dir, dict(os.environ)), timeout_s=300)
    return out.strip().splitlines()[-1] if out.strip() else "?"


def _wanted(python: str, specs: list[str]) -> dict[str, Any]:
    return {"format": FORMAT, "python": python, "debs": list(DEBS), "wheels": specs}


def is_provisioned(emu_dir: Path, wanted: dict[str, Any]) -> bool:
    man = manifest_path(emu_dir)
    if not man.is_file():
        return False
    have = json.loads(man.read_text())
    return all(have.get(k) == v for k, v in wanted.items())


def setup(dest: Path, requirements: Path | None = None, python: str = PYTHON, qemu: str | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Provision an aarch64 Python + TVM runtime into ``dest`` (see the module docstring); does nothing when
    ``dest`` already holds the same set. Needs the network, apt-get, dpkg-deb and pip."""
    dest = Path(dest).absolute()
    wanted = _wanted(python, wheel_specs(requirements))
    if is_provisioned(dest, wanted):
        log(f"aarch64 emulation sysroot {dest}: already provisioned")
        return dest
    t0 = time.perf_counter()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        debs = fetch_debs(DEBS, sysroot(tmp), tmp / "download")
        if not guest_python(tmp, python).exists():
            raise AgdError(f"the arm64 packages hold no {guest_python(tmp, python).name}: Debian 12 (bookworm) "
                           "apt sources expected")
        wheels = fetch_wheels(wanted["wheels"], site_dir(tmp), tmp / "download", python)
        shutil.rmtree(tmp / "download")
        found = find_qemu(qemu)
        tvm_version = check_guest(tmp, found, python) if found else None
        if found is None:
            log("qemu-aarch64 not found: the interpreter was not checked under emulation")
        man = {**wanted, "deb_files": debs, "wheel_files": wheels, "guest_tvm": tvm_version,
               "note": "emulated device: its timings say nothing about ARM speed"}
        manifest_path(tmp).write_text(json.dumps(man, indent=1) + "\n")
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"aarch64 emulation sysroot {dest}: provisioned in {time.perf_counter() - t0:.0f} s "
        f"({len(debs)} Debian packages, {len(wheels)} wheels, guest TVM {tvm_version or 'unchecked'})")
    return dest


def _replace_dir(src: Path, dest: Path) -> None:
    """Move the finished ``src`` to ``dest``, replacing an older ``dest``."""
    if dest.exists():
        old = dest.with_name(f"{dest.name}.old.{os.getpid()}")
        os.rename(dest, old)
        os.rename(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dest)


# ------------------------------------------------------------------------------------------ RPC server
@dataclass
class EmulatedRpcServer:
    """A TVM RPC server running under qemu-aarch64, registered with a tracker; a context manager that
    kills its process group (the server, its worker and session processes) on exit."""

    proc: subprocess.Popen
    workdir: Path
    tracker: tuple[str, int]
    key: str
    closed: bool = field(default=False)

    @property
    def url(self) -> str:
        """The agd target of this device (``rpc://HOST:PORT/KEY``)."""
        return f"rpc://{self.tracker[0]}:{self.tracker[1]}/{self.key}"

    def log_tail(self, lines: int = 3) -> str:
        log = self.workdir / "server.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:]) or "(no output)"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _kill_group(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmulatedRpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL what is left after ``grace_s``, reap ``proc``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_slots(tracker: Any, key: str) -> int:
    return int(tracker.summary().get("queue_info", {}).get(key, {}).get("free", 0))


def start_rpc_server(emu_dir: Path, tracker_host: str, tracker_port: int, key: str, timeout_s: float = 120.0,
                     qemu: str | None = None, host: str = "127.0.0.1") -> EmulatedRpcServer:
    """Start ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` in the aarch64 Python of
    ``emu_dir`` (provisioned by :func:`setup`) under qemu, listening on ``host``, and wait (at most
    ``timeout_s``: tens of seconds under emulation) until the tracker lists the key as free."""
    from tvm import rpc

    from agd.tuning.measure import check_reachable

    reason = unavailable_reason(emu_dir, qemu)
    qemu_path = find_qemu(qemu)
    if reason is not None or qemu_path is None:
        raise AgdError(f"emulated aarch64 RPC server: {reason}")
    check_reachable(tracker_host, tracker_port, min(timeout_s, 10.0))
    emu_dir = Path(emu_dir).resolve()
    python = json.loads(manifest_path(emu_dir).read_text()).get("python", PYTHON)
    workdir = Path(tempfile.mkdtemp(prefix="agd-arm64-rpc-"))
    command = guest_command(qemu_path, emu_dir, python)
    wrapper = write_wrapper(workdir / "python3", command)
    port = _free_port(host)
    args = ["-c", _BOOT, str(wrapper), "--host", host, "--port", str(port), "--port-end", str(port + 100),
            "--tracker", f"{tracker_host}:{tracker_port}", "--key", key]
    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen([*command, *args], env=guest_env(emu_dir, dict(os.environ)), cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = EmulatedRpcServer(proc, workdir, (tracker_host, tracker_port), key)
    try:
        tracker = rpc.connect_tracker(tracker_host, tracker_port)
        try:
            _wait_registered(server, tracker, timeout_s)
        finally:
            tracker.close()
    except BaseException:
        server.close()
        raise
    return server


def _wait_registered(server: EmulatedRpcServer, tracker: Any, timeout_s: float, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    host, port = server.tracker
    while _free_slots(tracker, server.key) < 1:
        code = server.proc.poll()
        if code is not None:
            raise AgdError(f"emulated aarch64 RPC server exited ({code}) before registering key {server.key!r}: "
                           f"{server.log_tail()}")
        if time.monotonic() > deadline:
            raise AgdError(f"emulated aarch64 RPC server did not register key {server.key!r} with tracker "
                           f"{host}:{port} within {timeout_s:g} s (qemu); last output: {server.log_tail()}")
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agd.tuning.emulate",
                                     description="Provision an emulated aarch64 TVM RPC device (qemu-user).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="download Debian's arm64 Python and the aarch64 TVM wheels into DIR")
    p.add_argument("dir", type=Path, help=f"where to provision it (the tests read {DEFAULT_DIR} or AGD_ARM64_SYSROOT)")
    p.add_argument("--requirements", type=Path, default=Path(__file__).resolve().parents[1] / "requirements.txt",
                   help="pins for the wheels (default: the repository's requirements.txt)")
    p.add_argument("--qemu", default=None, help="qemu-user aarch64 emulator used to check the result")
    args = parser.parse_args(argv)
    try:
        setup(args.dir, args.requirements, qemu=args.qemu)
    except AgdError as e:
        print(f"emulate setup: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
