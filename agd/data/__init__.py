"""Image data: reading/writing, MATLAB-compatible resizing, datasets, the teacher-output cache and the
built-in sample images."""

from agd.data.cache import TeacherCache, image_hash
from agd.data.datasets import ImageFolder, SRPairs, UnpairedFolders, item_generator, random_crop_box, random_flips
from agd.data.images import IMAGE_SUFFIXES, list_images, read_image, write_image
from agd.data.resize import bicubic_degrade, imresize, resize_weights, to_8bit
from agd.data.samples import sample_files, sample_images

__all__ = [
    "IMAGE_SUFFIXES", "ImageFolder", "SRPairs", "TeacherCache", "UnpairedFolders", "bicubic_degrade",
    "image_hash", "imresize", "item_generator", "list_images", "random_crop_box", "random_flips",
    "read_image", "resize_weights", "sample_files", "sample_images", "to_8bit", "write_image",
]
