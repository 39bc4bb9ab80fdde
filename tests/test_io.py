import pickle

import pytest
import torch

from agd.io import (
    AgdError,
    atomic_path,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
    unwrap_state_dict,
    verify_sha256,
)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    dest = tmp_path / "out.json"
    atomic_write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert dest.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left behind


def test_checkpoint_roundtrip_torch_and_safetensors(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    for name in ("ck.pth", "ck.safetensors"):
        save_checkpoint(sd, tmp_path / name)
        back = load_checkpoint(tmp_path / name)
        assert set(back) == {"w", "b"} and torch.equal(back["w"], sd["w"]) and torch.equal(back["b"], sd["b"])


def test_code_pickle_is_refused_not_run(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(AgdError, match="refused.*needs code"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(AgdError):
        load_checkpoint(raw)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AgdError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(AgdError, match="bad.safetensors"):
        load_checkpoint(bad)


def test_sha256_full_and_prefix(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"agd")
    digest = sha256_file(p)
    verify_sha256(p, digest)
    verify_sha256(p, digest[:8])
    with pytest.raises(AgdError, match="does not match"):
        verify_sha256(p, "0" * 64)


def test_unwrap_state_dict_wrappers_and_prefix():
    t = torch.zeros(1)
    assert unwrap_state_dict({"params_ema": {"module.a": t}, "params": {"b": t}}) == {"a": t}
    assert unwrap_state_dict({"params": {"b": t}}) == {"b": t}
    assert unwrap_state_dict({"a": t}) == {"a": t}
    with pytest.raises(AgdError, match="no state_dict"):
        unwrap_state_dict({"epoch": 3})
