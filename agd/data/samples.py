"""The built-in sample set: real photographs that ship inside installed wheels (no download).

scikit-image (a dependency of agd) carries public-domain / CC0 test photographs in its wheel (colour:
astronaut, coffee, chelsea, rocket, motorcycle, the Hubble deep field, a retina, an IHC micrograph; grey,
expanded to RGB: camera, grass, gravel, brick, moon, coins); matplotlib (also a dependency) carries the
Grace Hopper portrait; scikit-learn's ``china.jpg`` and ``flower.jpg`` are used too when scikit-learn happens
to be installed. These are the embedded default input of ``agd demo`` and the main job.

:data:`HELD_OUT` names the samples the main job keeps out of training and evaluates on: three colour
photographs (a cat, a cup of coffee, a portrait) and a grey texture (grass).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from agd.data.images import read_image
from agd.io import AgdError

# (package, path inside the package, name); colour photographs only
_SOURCES = (
    ("skimage", "data/astronaut.png", "astronaut"),
    ("skimage", "data/coffee.png", "coffee"),
    ("skimage", "data/chelsea.png", "chelsea"),
    ("skimage", "data/rocket.jpg", "rocket"),
    ("skimage", "data/motorcycle_left.png", "motorcycle"),
    ("skimage", "data/hubble_deep_field.jpg", "hubble"),
    ("skimage", "data/retina.jpg", "retina"),
    ("skimage", "data/ihc.png", "ihc"),
    ("skimage", "data/camera.png", "camera"),
    ("skimage", "data/grass.png", "grass"),
    ("skimage", "data/gravel.png", "gravel"),
    ("skimage", "data/brick.png", "brick"),
    ("skimage", "data/moon.png", "moon"),
    ("skimage", "data/coins.png", "coins"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper"),
    ("sklearn", "datasets/images/china.jpg", "china"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
)
HELD_OUT = ("chelsea", "coffee", "grace_hopper", "grass")
DEMO = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "china", "flower")  # what agd demo shows


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path
    package: str


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def sample_files() -> list[Sample]:
    """The sample images found in the installed packages (located without importing them)."""
    found = []
    for pkg, rel, name in _SOURCES:
        root = _package_dir(pkg)
        if root is not None and (root / rel).is_file():
            found.append(Sample(name, root / rel, pkg))
    if not found:
        raise AgdError("built-in samples: none found; they ship in scikit-image (pip install scikit-image)")
    return found


def sample_images(names: list[str] | tuple[str, ...] | None = None, *,
                  available_only: bool = False) -> list[tuple[str, torch.Tensor]]:
    """(name, (3, H, W) float32 [0, 1] image) for each sample, or for the given names (with
    ``available_only``, those of them that are installed)."""

    files = sample_files()
    if names is not None and available_only:
        names = [n for n in names if n in {s.name for s in files}]
    if names is not None:
        known = {s.name: s for s in files}
        missing = [n for n in names if n not in known]
        if missing:
            raise AgdError(f"built-in samples: unknown {', '.join(missing)} (available: {', '.join(known)})")
        files = [known[n] for n in names]
    return [(s.name, read_image(s.path)) for s in files]
