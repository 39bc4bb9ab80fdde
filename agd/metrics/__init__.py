"""Image quality metrics: PSNR/SSIM (SR literature conventions) and FID (pytorch-fid compatible)."""

from agd.metrics.fid import FIDSampleWarning, compute_fid, extract_features, feature_stats, fid_from_features, frechet_distance
from agd.metrics.image_quality import output_psnr, psnr, psnr_per_image, rgb_to_y, ssim, ssim_per_image
from agd.metrics.inception import InceptionV3FID, load_inception

__all__ = [
    "FIDSampleWarning", "InceptionV3FID", "compute_fid", "extract_features", "feature_stats", "fid_from_features",
    "frechet_distance", "load_inception", "output_psnr", "psnr", "psnr_per_image", "rgb_to_y", "ssim", "ssim_per_image",
]
