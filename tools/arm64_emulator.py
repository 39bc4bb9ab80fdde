#!/usr/bin/env python3
"""Provision an emulated aarch64 TVM RPC device for CI and tests: ``python3 tools/arm64_emulator.py setup DIR``.

Standard library only: ``.ci/run`` runs it before the virtualenv (and agd) exists. It downloads Debian's
arm64 ``python3.11-minimal`` and the libraries it loads (``apt-get download`` with a private package list,
so the system's apt state is untouched, unpacked with ``dpkg -x`` into ``DIR/sysroot``) and the aarch64
wheels of apache-tvm, apache-tvm-ffi and what TVM's RPC server imports (``pip download --platform``,
unzipped into ``DIR/site``), then checks that the interpreter imports TVM under qemu. Idempotent; built in
``DIR.tmp`` and renamed into place. About 180 MB; needs the network, apt-get, dpkg-deb and pip.

``DIR/emulate.json`` records what was fetched and the layout agd reads at run time
(:mod:`agd.tuning.emulate`: ``sysroot``, ``interpreter``, ``site``, ``guest_env``); the tests use
``.cache/arm64-emu`` or ``AGD_ARM64_SYSROOT``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

FORMAT = 2  # of emulate.json: agd.tuning.emulate.FORMAT reads the same number
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


class SetupError(Exception):
    """A provisioning step that failed; printed on one line."""


def layout(python: str = PYTHON) -> dict[str, Any]:
    """Where things are in a provisioned folder (relative paths) and the guest's own environment."""
    return {"sysroot": "sysroot", "interpreter": f"sysroot/usr/bin/python{python}", "site": "site",
            # the runtime library only (libtvm_compiler.so is not shipped: UNUSED_FILES)
            "guest_env": {"PYTHONNOUSERSITE": "1", "TVM_USE_RUNTIME_LIB": "1"}}


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
        raise SetupError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"{what}: `{' '.join(cmd[:3])} ...` took over {timeout_s:g} s") from None
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        raise SetupError(f"{what} failed (exit {res.returncode}): {lines[-1].strip() if lines else '(no output)'}")
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
            raise SetupError(f"{tool} not found: provisioning the aarch64 sysroot needs a Debian host")
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


def check_guest(root: Path, where: dict[str, Any], qemu: str) -> str:
    """Import the RPC server's modules in the aarch64 Python under qemu (which also byte-compiles them);
    returns the TVM version it reports. ``where``: :func:`layout`'s dict."""
    env = {**{k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ},
           "PYTHONPATH": str(root / where["site"]), **where["guest_env"]}
    code = "import numpy, psutil, cloudpickle, tvm, tvm.rpc.server; print(tvm.__version__)"
    out = _run([qemu, "-L", str(root / where["sysroot"]), str(root / where["interpreter"]), "-c", code],
               "aarch64 Python under qemu: import tvm", env=env, timeout_s=300)
    return out.strip().splitlines()[-1] if out.strip() else "?"


def _wanted(python: str, specs: list[str]) -> dict[str, Any]:
    return {"format": FORMAT, "python": python, "debs": list(DEBS), "wheels": specs, **layout(python)}


def is_provisioned(dest: Path, wanted: dict[str, Any]) -> bool:
    man = dest / "emulate.json"
    if not man.is_file():
        return False
    have = json.loads(man.read_text())
    return all(have.get(k) == v for k, v in wanted.items())


def setup(dest: Path, requirements: Path | None = None, python: str = PYTHON, qemu: str | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Provision an aarch64 Python + TVM runtime into ``dest`` (see the module docstring); does nothing when
    ``dest`` already holds the same set."""
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
        debs = fetch_debs(DEBS, tmp / wanted["sysroot"], tmp / "download")
        if not (tmp / wanted["interpreter"]).exists():
            raise SetupError(f"the arm64 packages hold no {Path(wanted['interpreter']).name}: Debian 12 (bookworm) "
                             "apt sources expected")
        wheels = fetch_wheels(wanted["wheels"], tmp / wanted["site"], tmp / "download", python)
        shutil.rmtree(tmp / "download")
        found = next(filter(None, map(shutil.which, (qemu,) if qemu else QEMUS)), None)  # to check the guest
        tvm_version = check_guest(tmp, wanted, found) if found else None
        if found is None:
            log("qemu-aarch64 not found: the interpreter was not checked under emulation")
        man = {**wanted, "deb_files": debs, "wheel_files": wheels, "guest_tvm": tvm_version,
               "note": "emulated device: its timings say nothing about ARM speed"}
        (tmp / "emulate.json").write_text(json.dumps(man, indent=1) + "\n")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 tools/arm64_emulator.py",
                                     description="Provision an emulated aarch64 TVM RPC device (qemu-user).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="download Debian's arm64 Python and the aarch64 TVM wheels into DIR")
    p.add_argument("dir", type=Path, help="where to provision it (the tests read .cache/arm64-emu or AGD_ARM64_SYSROOT)")
    p.add_argument("--requirements", type=Path, default=Path(__file__).resolve().parents[1] / "requirements.txt",
                   help="pins for the wheels (default: the repository's requirements.txt)")
    p.add_argument("--qemu", default=None, help="qemu-user aarch64 emulator used to check the result")
    args = parser.parse_args(argv)
    try:
        setup(args.dir, args.requirements, qemu=args.qemu)
    except SetupError as e:
        print(f"arm64_emulator setup: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
