"""Pretrained teacher generators: architectures (RRDBNet, CycleGAN ResnetGenerator), weight loaders
(ESRGAN / BasicSR / Real-ESRGAN, pix2pix / vintagify CycleGAN, ncnn, ``module:factory``, ``.pt2``),
the named-teacher registry, the probe of modules agd has never seen, and tiled inference.

Images given to and returned by a :class:`Teacher` are RGB (N, 3, H, W) in [0, 1].
"""

from agd.teachers.cyclegan import ResnetBlock, ResnetGenerator
from agd.teachers.loaders import (
    KNOWN_SHA256,
    LoadedGenerator,
    detect_format,
    esrgan_to_basicsr,
    infer_cyclegan_config,
    infer_rrdbnet_config,
    load_cyclegan,
    load_exported,
    load_factory,
    load_generator_checkpoint,
    load_rrdbnet,
    pix2pix_to_block_names,
)
from agd.teachers.ncnn import load_rrdbnet as load_ncnn_rrdbnet
from agd.teachers.ncnn import parse_param as parse_ncnn_param
from agd.teachers.ncnn import read_bin as read_ncnn_bin
from agd.teachers.ncnn import run_graph as run_ncnn_graph
from agd.teachers.registry import Teacher, TeacherInfo, get_teacher_info, list_teachers, load_teacher
from agd.teachers.rrdbnet import RRDBNet
from agd.teachers.spec import TeacherSpec, parse_range, resolve_on_resume
from agd.teachers.tiling import tiled_forward

__all__ = [
    "KNOWN_SHA256",
    "LoadedGenerator",
    "RRDBNet",
    "ResnetBlock",
    "ResnetGenerator",
    "Teacher",
    "TeacherInfo",
    "TeacherSpec",
    "detect_format",
    "esrgan_to_basicsr",
    "get_teacher_info",
    "infer_cyclegan_config",
    "infer_rrdbnet_config",
    "list_teachers",
    "load_cyclegan",
    "load_exported",
    "load_factory",
    "load_generator_checkpoint",
    "load_ncnn_rrdbnet",
    "load_rrdbnet",
    "load_teacher",
    "parse_ncnn_param",
    "parse_range",
    "pix2pix_to_block_names",
    "read_ncnn_bin",
    "resolve_on_resume",
    "run_ncnn_graph",
    "tiled_forward",
]
