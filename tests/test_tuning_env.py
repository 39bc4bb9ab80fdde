"""agd.tuning without TVM (the status path and the command line's start import it), and the emulated
aarch64 device's folder: what tools/arm64_emulator.py writes is what agd.tuning.emulate reads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agd.io import AgdError
from agd.tuning import emulate

REPO = Path(__file__).resolve().parents[1]

# a child process in which `import tvm` fails as it does where apache-tvm is absent
NO_TVM = "import sys; sys.modules['tvm'] = None; sys.modules['tvm_ffi'] = None; "


def _child(code: str, without_tvm: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", (NO_TVM if without_tvm else "import sys; ") + code],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_agd_info_reports_tvm_unusable_without_importing_it():
    res = _child("sys.argv = ['agd', 'info', '--json']; from agd.cli import main; main()")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {b["name"]: b for b in json.loads(res.stdout)["backends"]}
    for name in ("TVM x86", "TVM arm64", "TVM cuda"):
        assert not rows[name]["available"] and "apache-tvm is not usable" in rows[name]["reason"], rows[name]


def test_importing_agd_tuning_and_its_commands_does_not_import_tvm():
    res = _child("import agd.backends, agd.commands.tvm, agd.tuning; print(sorted(m for m in sys.modules "
                 "if m.split('.')[0] in ('tvm', 'tvm_ffi')))", without_tvm=False)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout[-500:] + res.stderr[-2000:]


def test_compile_modules_raise_one_agd_error_without_tvm():
    res = _child("from agd.io import AgdError\n"
                 "try:\n    import agd.tuning.artifact\nexcept AgdError as e:\n    print('AgdError:', e)\n")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("AgdError: apache-tvm is not usable") and "pip install 'apache-tvm==" in res.stdout


def _tools():
    spec = importlib.util.spec_from_file_location("arm64_emulator", REPO / "tools" / "arm64_emulator.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _provisioned(tmp_path: Path, **changes) -> Path:
    """A folder laid out as tools/arm64_emulator.py leaves it (its manifest; an empty interpreter file)."""
    tools = _tools()
    man = {**tools._wanted(tools.PYTHON, tools.wheel_specs(None)), **changes}
    interpreter = tmp_path / man["interpreter"]
    interpreter.parent.mkdir(parents=True)
    interpreter.write_text("")
    (tmp_path / emulate.MANIFEST).write_text(json.dumps(man))
    return tmp_path


def test_the_library_reads_the_layout_the_provisioning_script_writes(tmp_path):
    tools = _tools()
    assert tools.FORMAT == emulate.FORMAT and set(emulate.LAYOUT_KEYS) <= set(tools.layout())
    guest = emulate.read_guest(_provisioned(tmp_path))
    root = tmp_path.resolve()
    assert guest.interpreter == root / "sysroot" / "usr" / "bin" / f"python{tools.PYTHON}"
    assert emulate.guest_command("/q", guest) == ["/q", "-L", str(root / "sysroot"), str(guest.interpreter)]
    env = emulate.guest_env(guest, {"PATH": "/bin", "PYTHONPATH": "/host", "LD_LIBRARY_PATH": "/x"})
    assert env == {"PATH": "/bin", "PYTHONPATH": str(root / "site"), "PYTHONNOUSERSITE": "1",
                   "TVM_USE_RUNTIME_LIB": "1"}
    assert emulate.unavailable_reason(tmp_path, qemu="sh") is None  # any program on PATH stands in for qemu


def test_unavailable_reasons_name_the_folder_and_the_setup_command(tmp_path):
    assert "not found" in emulate.unavailable_reason(tmp_path, qemu="agd-no-such-qemu")
    empty = emulate.unavailable_reason(tmp_path / "none", qemu="sh")
    assert str(tmp_path / "none") in empty and "tools/arm64_emulator.py setup" in empty
    old = _provisioned(tmp_path / "old", format=1)
    assert "format 1 (expected 2)" in emulate.unavailable_reason(old, qemu="sh")
    broken = _provisioned(tmp_path / "broken")
    (broken / "sysroot" / "usr" / "bin" / "python3.11").unlink()
    with pytest.raises(AgdError, match="is incomplete"):
        emulate.read_guest(broken)


def test_wheel_pins_come_from_requirements(tmp_path):
    tools = _tools()
    req = tmp_path / "requirements.txt"
    req.write_text("apache_tvm==0.27.0.post1  # pinned\nnumpy>=1\ncloudpickle==3.1.0\n")
    specs = tools.wheel_specs(req)
    assert specs[:2] == ["apache-tvm==0.27.0.post1", "apache-tvm-ffi"] and "cloudpickle==3.1.0" in specs
    assert "numpy" in specs and len(specs) == len(tools.WHEELS)
