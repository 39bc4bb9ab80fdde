"""Image quality metrics: PSNR/SSIM (SR literature conventions) and FID."""

from agd.metrics.image_quality import psnr, psnr_per_image, rgb_to_y, ssim, ssim_per_image

__all__ = ["psnr", "psnr_per_image", "rgb_to_y", "ssim", "ssim_per_image"]
