"""Distillation losses: pixel L1, perceptual content, Gram-matrix style and total variation terms, weighted
by a :class:`LossConfig` (AGD's settings as presets), on VGG16/VGG19 features from user-given torchvision
weights or, without them, on the teacher's own early layers.
"""

from agd.distill.config import CONTENT_CRITERIA, EXTRACTORS, TEACHER_TAPS, LossConfig, vgg_to_teacher_tap
from agd.distill.features import TeacherFeatures, teacher_features
from agd.distill.losses import DistillLoss
from agd.distill.presets import LOSS_PRESETS, get_preset
from agd.distill.terms import content_distance, gram_matrix, pixel_l1, style_distance, total_variation
from agd.distill.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG_ARCHS,
    VGG_FILES,
    VGGFeatures,
    VGGFile,
    VGGWeights,
    load_vgg,
    resolve_vgg_path,
    verify_vgg_file,
    vgg_layer_index,
    vgg_layer_names,
    vgg_state_shapes,
)

__all__ = [
    "CONTENT_CRITERIA", "EXTRACTORS", "IMAGENET_MEAN", "IMAGENET_STD", "LOSS_PRESETS", "TEACHER_TAPS", "VGG_ARCHS",
    "VGG_FILES", "DistillLoss", "LossConfig", "TeacherFeatures", "VGGFeatures", "VGGFile", "VGGWeights",
    "content_distance", "get_preset", "gram_matrix", "load_vgg", "pixel_l1", "resolve_vgg_path", "style_distance",
    "teacher_features", "total_variation", "verify_vgg_file", "vgg_layer_index", "vgg_layer_names",
    "vgg_state_shapes", "vgg_to_teacher_tap",
]
