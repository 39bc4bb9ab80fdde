"""Named loss configurations (:data:`LOSS_PRESETS`).

AutoGAN-Distiller's settings, read from its code (VITA-Group/AGD, ``AGD_ST/search/config_*.py``,
``AGD_SR/search/config_*.py``, ``loss_weight = [pixel, style, content, tv]``, ``model_search.py``):

- translation: VGG16 (relu1_2, relu2_2, relu3_3, relu4_3), style weight 1e5 on all four (MSE between
  Grams normalised by C*H*W), content weight 1 on relu2_2 with **L1** (``nn.L1Loss`` in AGD's
  ``_criterion``; Johnson et al. use a squared distance, but AGD's weights are tuned for L1), TV 0;
  pixel L1 weight 0 during the search (``[0, 1e5, 1, 0]``) and 1e-2 in retraining (``[1e-2, 1e5, 1, 0]``).
  AGD feeds VGG its generator's output without ImageNet normalisation; agd normalises (the statistics the
  torchvision weights were trained with), which changes feature magnitudes somewhat;
- super-resolution: pixel L1 weight 1e-2 plus content weight 1, **L1** (``C.loss_func = 'L1'``) on VGG19
  ``conv5_4`` before its ReLU (``before_act=True``: ``features[:35]``), style 0, TV 0 — the same
  ``[1e-2, 0, 1, 0]`` in the search and in retraining. AGD's weights-only pretraining phases use pixel L1
  alone (``[1, 0, 0, 0]``): the ``pixel`` preset. AGD distils against the teacher's output only; the
  ``gt_pixel`` field adds an optional ground-truth term (0 here).

``tiny-*`` presets need no VGG weights: they use the teacher's early layers (taps ``t1``..``t3``). Their
weights are agd's choice, not the paper's: pixel L1 1 (the dependable signal in a short run), content
L1 (on ``t2`` for translation, on the cheap ``t1`` for SR) and, for translation, style on ``t1``..``t3``; the content/style weights were chosen from term
values measured on the real teachers with crude students (figures in each preset's ``note``): translation
terms within about 3x of each other, the SR content term about 15 % of the pixel term.
"""

from __future__ import annotations

from agd.distill.config import LossConfig
from agd.io import AgdError

_VGG16_STYLE = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
_TINY_TRANSLATION = (
    "agd's choice: on the vintage teacher, 256x256 crops of horse.jpg, Set5 baby, Set14 lenna, students = the "
    "input / its grey version / a blurred teacher output: pixel 0.018-0.39, content(t2) 0.08-0.23, "
    "style(t1+t2+t3) 2e-7-5.6e-6, so weights 1 / 1 / 1e5 put the three terms within about 3x of each other")
_TINY_SR = (
    "agd's choice: on realesrgan-x4plus, 192x192 HR crops of Set5 baby, bird, butterfly, student = bicubic x4 "
    "of the LR: pixel 0.034-0.084, content(t1) 0.0061-0.013, so content weight 1 adds about 15 % of the pixel term; "
    "t1 (conv_first only) because t2 runs a 64-channel dense block at HR resolution: about 15x the cost on CPU")
_AGD_ST = "AGD_ST config_{phase}.py loss_weight={w}; content L1 relu2_2, style MSE of Grams/(C*H*W)"

LOSS_PRESETS: dict[str, LossConfig] = {
    cfg.name: cfg
    for cfg in (
        LossConfig(name="paper-translation-search", pixel=0.0, content=1.0, style=1e5, tv=0.0,
                   content_layers=("relu2_2",), style_layers=_VGG16_STYLE, content_criterion="l1",
                   extractor="vgg16", note=_AGD_ST.format(phase="search", w="[0, 1e5, 1, 0]")),
        LossConfig(name="paper-translation-train", pixel=1e-2, content=1.0, style=1e5, tv=0.0,
                   content_layers=("relu2_2",), style_layers=_VGG16_STYLE, content_criterion="l1",
                   extractor="vgg16", note=_AGD_ST.format(phase="train", w="[1e-2, 1e5, 1, 0]")),
        LossConfig(name="paper-sr", pixel=1e-2, content=1.0, content_layers=("conv5_4",), content_criterion="l1",
                   extractor="vgg19",
                   note="AGD_SR config_search.py / config_train.py loss_weight=[1e-2, 0, 1, 0], loss_func L1, "
                        "VGG19 features[:35] (conv5_4 before activation)"),
        LossConfig(name="pixel", pixel=1.0, extractor="teacher",
                   note="AGD's weights-only pretraining phases: loss_weight=[1, 0, 0, 0]"),
        LossConfig(name="tiny-translation", pixel=1.0, content=1.0,
                   style=1e5, content_layers=("t2",), style_layers=("t1", "t2", "t3"),
                   content_criterion="l1", extractor="teacher", note=_TINY_TRANSLATION),
        LossConfig(name="tiny-sr", pixel=1.0, content=1.0, content_layers=("t1",),
                   content_criterion="l1", extractor="teacher", note=_TINY_SR),
    )
}


def get_preset(name: str) -> LossConfig:
    """The named :class:`LossConfig`; AgdError listing the names when unknown."""
    try:
        return LOSS_PRESETS[name]
    except KeyError:
        raise AgdError(f"loss preset {name!r}: unknown; known presets: {', '.join(LOSS_PRESETS)}") from None
