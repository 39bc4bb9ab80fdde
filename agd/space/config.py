"""Search-space configurations: typed, frozen, JSON-serialisable, with named presets.

The defaults follow AutoGAN-Distiller's spaces (Fu et al., ICML 2020) plus what it lacked (a true
``identity`` choice, optional dilated 3x3, configurable operator sets):
- widths are ``ratio x base`` for ratios {4, 6, 8, 10, 12}/12, rounded to multiples of 8;
- translation: stem conv7x7 (64) → two stride-2 conv3x3 (128, 256) → ``n_layers`` searchable layers at
  1/4 resolution (base 256) → two transposed conv3x3 (128, 64) → conv7x7 to 3 channels with tanh;
  InstanceNorm + ReLU; stem and header widths searchable;
- super-resolution: conv3x3 (nf 64) → ``n_cells`` cells of ``layers_per_cell`` searchable layers (cell
  output ``0.2 * cell(x) + x``, inner widths searchable, cell in/out fixed at nf) → trunk conv3x3 + global
  skip → per upsampling round (:func:`up_factors`: x2 one round of 2, x3 one of 3, x4 two of 2, x8 three
  of 2): nearest upsampling, conv3x3, LeakyReLU(0.2) → conv_hr (LeakyReLU) → conv_last; no norm.
  Beyond AGD (``search_tail``, on by default): the upsampling convs and conv_hr choose their widths and
  between conv3x3 and conv1x1, and conv_hr may be removed (identity). At x4 these run at 4x and 16x the
  LR pixel count and hold most of the MACs of any small network: with them fixed (3x3, 64 channels)
  the smallest x4 network is 91.3 GMACs at a 256x256 input, with them searchable 4.2 GMACs.
  Also beyond AGD (``input_skip``, bicubic by default): the input upsampled by bicubic interpolation is
  added to the output, so the network learns the residual over bicubic upscaling (as SRVGGNetCompact
  and most real-time SR networks do with nearest or bilinear upsampling). Without it a student trained
  for minutes on a CPU stays below bicubic upscaling itself (measured: BENCHMARKS.md). Genotype files
  without the field are read as ``"none"``, the topology they were written for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from agd.io import AgdError

SEARCH_OPS = ("conv1x1", "conv3x3", "conv3x3_d2", "resblock", "dwsblock", "identity")
AGD_RATIOS = (4 / 12, 6 / 12, 8 / 12, 10 / 12, 12 / 12)
DEFAULT_OPS = ("conv1x1", "conv3x3", "resblock", "dwsblock", "identity")
INPUT_SKIPS = ("none", "bicubic", "bilinear", "nearest")  # SR: how the input is upsampled for the skip
# translation: the output is the network's residual plus the input ("identity") or plus a learned 3x3 colour
# matrix and offset of the input ("colour", a 1x1 convolution that starts as the identity), or the network alone
TRANSLATION_SKIPS = ("none", "identity", "colour")
# SR scale → the nearest-upsampling factors of its rounds, one conv_up layer each (x2 rounds as ESRGAN's;
# x3 in one round, as EDSR's and RCAN's x3 upsamplers)
SR_UP_FACTORS: dict[int, tuple[int, ...]] = {1: (), 2: (2,), 3: (3,), 4: (2, 2), 8: (2, 2, 2)}
SR_SCALES = tuple(SR_UP_FACTORS)


def up_factors(scale: int) -> tuple[int, ...]:
    """The upsampling rounds of an SR network at ``scale``: their nearest-upsampling factors, in order
    (1: none, 2: (2,), 3: (3,), 4: (2, 2), 8: (2, 2, 2)); their product is the scale."""
    if isinstance(scale, bool) or scale not in SR_UP_FACTORS:
        raise AgdError(f"space: SR scale {scale} is not supported (supported: {', '.join(map(str, SR_SCALES))})")
    return SR_UP_FACTORS[scale]


def width_choices(base: int, ratios: tuple[float, ...], round_to: int) -> tuple[int, ...]:
    """Sorted distinct widths ``round(ratio * base / round_to) * round_to`` (at least ``round_to``)."""
    return tuple(sorted({max(round_to, int(round(r * base / round_to)) * round_to) for r in ratios}))


def _check_common(ops: tuple[str, ...], ratios: tuple[float, ...], round_to: int, expansion: int) -> None:
    bad = [o for o in ops if o not in SEARCH_OPS]
    if bad or not ops:
        raise AgdError(f"space: unknown operator(s) {bad or '(none given)'}; choose from {', '.join(SEARCH_OPS)}")
    if len(set(ops)) != len(ops):
        raise AgdError(f"space: operators repeated in {ops}")
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise AgdError(f"space: width ratios {ratios} must lie in (0, 1]")
    if round_to < 1 or expansion < 1:
        raise AgdError("space: round_to and dws_expansion must be >= 1")


@dataclass(frozen=True)
class TranslationSpaceConfig:
    in_ch: int = 3
    out_ch: int = 3
    stem_width: int = 64
    down_widths: tuple[int, int] = (128, 256)
    up_widths: tuple[int, int] = (128, 64)
    n_layers: int = 9
    ops: tuple[str, ...] = DEFAULT_OPS
    width_ratios: tuple[float, ...] = AGD_RATIOS
    round_to: int = 8
    search_stem_header: bool = True
    padding: str = "reflect"
    norm_affine: bool = False
    dws_expansion: int = 3
    input_skip: str = "identity"  # TRANSLATION_SKIPS: "identity", "colour" or "none"
    reference_size: tuple[int, int] = (256, 256)

    kind = "translation"

    def __post_init__(self) -> None:
        _check_common(self.ops, self.width_ratios, self.round_to, self.dws_expansion)
        if self.n_layers < 1:
            raise AgdError(f"space: n_layers {self.n_layers} must be >= 1")
        if self.padding not in ("zeros", "reflect"):
            raise AgdError(f"space: padding {self.padding!r} is not zeros or reflect")
        if self.input_skip not in TRANSLATION_SKIPS:
            raise AgdError(f"space: input_skip {self.input_skip!r} is not one of {', '.join(TRANSLATION_SKIPS)}")

    @property
    def scale(self) -> int:
        return 1


@dataclass(frozen=True)
class SRSpaceConfig:
    in_ch: int = 3
    out_ch: int = 3
    scale: int = 4
    nf: int = 64
    n_cells: int = 5
    layers_per_cell: int = 5
    ops: tuple[str, ...] = DEFAULT_OPS
    width_ratios: tuple[float, ...] = AGD_RATIOS
    round_to: int = 8
    dws_expansion: int = 3
    search_tail: bool = True
    input_skip: str = "bicubic"  # the input upsampled this way is added to the output (or "none")
    reference_size: tuple[int, int] = (256, 256)  # the LR input, as for the teachers

    kind = "sr"

    def __post_init__(self) -> None:
        _check_common(self.ops, self.width_ratios, self.round_to, self.dws_expansion)
        up_factors(self.scale)  # raises for a scale without an upsampling layout
        if self.n_cells < 1 or self.layers_per_cell < 1:
            raise AgdError("space: n_cells and layers_per_cell must be >= 1")
        if self.input_skip not in INPUT_SKIPS:
            raise AgdError(f"space: input_skip {self.input_skip!r} is not one of {', '.join(INPUT_SKIPS)}")


SpaceConfig = TranslationSpaceConfig | SRSpaceConfig

PRESETS: dict[str, SpaceConfig] = {
    "translation": TranslationSpaceConfig(),
    # the learned colour skip: for training photographs like the user's own (BENCHMARKS.md, "colour skip")
    "translation-colour": TranslationSpaceConfig(input_skip="colour"),
    "translation-tiny": TranslationSpaceConfig(stem_width=8, down_widths=(8, 16), up_widths=(8, 8), n_layers=2,
                                               width_ratios=(0.5, 1.0), round_to=4, reference_size=(32, 32)),
    "sr-x4": SRSpaceConfig(),
    "sr-x3": SRSpaceConfig(scale=3),
    "sr-x2": SRSpaceConfig(scale=2),
    "sr-tiny": SRSpaceConfig(nf=8, n_cells=1, layers_per_cell=3, width_ratios=(0.5, 1.0), round_to=4,
                             reference_size=(12, 12)),
}


@dataclass(frozen=True)
class TaskDefault:
    """What a task (and SR scale) gets when nobody says otherwise."""

    task: str  # "translation" or "sr"
    scale: int  # the SR scale (1 for translation)
    space: str  # the space preset a teacher of this task and scale is searched in
    teacher: str  # the named teacher shown beside the task's spaces (``agd space show``)


# The one table of per-task defaults: the search's default space (by the teacher's task and scale),
# ``get_config("sr")`` (a task's first row) and the teacher ``agd space show`` compares a space with.
TASK_DEFAULTS: tuple[TaskDefault, ...] = (
    TaskDefault("translation", 1, "translation", "vintage"),
    TaskDefault("sr", 4, "sr-x4", "realesrgan-x4plus"),
    TaskDefault("sr", 3, "sr-x3", "realesrgan-x4plus"),
    TaskDefault("sr", 2, "sr-x2", "realesrgan-x4plus"),
)


def task_default(task: str, scale: int | None = None) -> TaskDefault:
    """The row of :data:`TASK_DEFAULTS` for ``task`` (and ``scale``; None: the task's first row); AgdError
    naming what has one otherwise."""
    rows = [d for d in TASK_DEFAULTS if d.task == task]
    if not rows:
        raise AgdError(f"task {task!r}: unknown (tasks: {', '.join(dict.fromkeys(d.task for d in TASK_DEFAULTS))})")
    found = [d for d in rows if scale is None or d.scale == scale]
    if isinstance(scale, bool) or not found:
        have = ", ".join(f"x{d.scale}" for d in sorted(rows, key=lambda d: d.scale))
        raise AgdError(f"no {'SR' if task == 'sr' else task} search space for x{scale}; spaces exist for {have}")
    return found[0]


def sr_space_for_scale(scale: int) -> str:
    """The SR space preset for a scale ("sr-x2", "sr-x3", "sr-x4"); AgdError naming the scales that have one
    otherwise."""
    return task_default("sr", scale).space


def config_to_dict(cfg: SpaceConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {"kind": cfg.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


def config_from_dict(d: dict[str, Any], what: str = "space") -> SpaceConfig:
    d = dict(d)
    kind = d.pop("kind", None)
    cls = {"translation": TranslationSpaceConfig, "sr": SRSpaceConfig}.get(kind)
    if cls is None:
        raise AgdError(f"{what}: kind {kind!r} is not 'translation' or 'sr'")
    known = {f.name: f for f in fields(cls)}
    if "input_skip" not in d:
        d["input_skip"] = "none"  # genotypes written before the field existed had no input skip
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise AgdError(f"{what}: unknown field(s) {', '.join(unknown)} for a {kind} space")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def get_config(name: str, **overrides: Any) -> SpaceConfig:
    """A preset by name (or task: ``translation``, ``sr``), optionally with fields replaced."""
    key = task_default(name).space if any(d.task == name for d in TASK_DEFAULTS) else name
    if key not in PRESETS:
        raise AgdError(f"space {name!r}: unknown (presets: {', '.join(PRESETS)})")
    return replace(PRESETS[key], **overrides) if overrides else PRESETS[key]


class OfSpace:
    """What a space, a genotype and a student read alike from the space config they hold as ``config``:
    the task (``kind``: "translation" or "sr") and the SR scale (1 for translation)."""

    config: SpaceConfig

    @property
    def kind(self) -> str:
        return self.config.kind

    task = kind

    @property
    def scale(self) -> int:
        return self.config.scale
