"""agd.tuning.rewrite: transposed convolutions as sub-pixel convolutions, strided convolutions as
space-to-depth ones and 3x3 convolutions as Winograd ones before a TVM export. Pure PyTorch (no TVM
needed): each rewrite is checked against the nn.ConvTranspose2d / nn.Conv2d it replaces, in float64."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from agd.arch import derive, random_genotype
from agd.space import SearchSpace, get_config
from agd.tuning.rewrite import (
    WINOGRAD_MIN_WIDTH,
    SpaceToDepthConv2d,
    SubPixelConvTranspose2d,
    WinogradConv2d,
    for_tvm,
    space_to_depth_reason,
    subpixel_reason,
    winograd_reason,
)

# (kernel, stride, padding, output_padding, H, W): the spaces' upsampling (3, 2, 1, 1), other kernels,
# strides 2-3, paddings that crop, output paddings, odd sizes and a 1-pixel input
CASES = [(3, 2, 1, 1, 5, 7), (3, 2, 1, 0, 5, 7), (4, 2, 1, 0, 6, 5), (3, 3, 1, 2, 4, 4), (5, 2, 2, 1, 3, 8),
         (2, 2, 0, 0, 5, 5), (3, 2, 0, 0, 4, 3), (7, 3, 3, 2, 5, 6), (1, 2, 0, 1, 3, 3), (3, 2, 1, 1, 1, 1),
         ((3, 5), (2, 3), (1, 2), (1, 0), 4, 6)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,s,p,op,h,w", CASES)
def test_subpixel_matches_conv_transpose_float64(k, s, p, op, h, w, bias):
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(5, 4, k, s, p, op, bias=bias).double()
    _same_in_float64(ct, SubPixelConvTranspose2d(ct), h, w)


def _same_in_float64(original: nn.Module, rewritten: nn.Module, h: int, w: int) -> None:
    x = torch.randn(2, 5, h, w, dtype=torch.float64)
    want, got = original(x), rewritten(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# (kernel, stride, padding, padding mode, H, W): the translation space's downsampling (3, 2, 1, zeros),
# kernels smaller than, equal to and larger than the stride, non-square kernels and strides, inputs whose
# last rows or columns the convolution never reads, reflect / replicate padding, a 1-pixel output
S2D_CASES = [(3, 2, 1, "zeros", 8, 8), (3, 2, 1, "zeros", 7, 9), (3, 2, 1, "reflect", 5, 6), (4, 2, 1, "zeros", 9, 6),
             (5, 3, 2, "zeros", 11, 7), (1, 2, 0, "zeros", 5, 4), (2, 2, 0, "zeros", 6, 6), (3, 2, 0, "zeros", 3, 3),
             ((3, 5), (2, 3), (1, 2), "replicate", 6, 10), (7, 4, 3, "zeros", 13, 9)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,s,p,mode,h,w", S2D_CASES)
def test_space_to_depth_matches_strided_conv_float64(k, s, p, mode, h, w, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, k, s, p, bias=bias, padding_mode=mode).double()
    sd = SpaceToDepthConv2d(conv)
    _same_in_float64(conv, sd, h, w)
    assert sd.weight.shape[2:] == tuple(-(-kk // ss) for kk, ss in zip(conv.kernel_size, conv.stride))
    # only the phases the kernel reaches become channels: no all-zero ones (a 1x1 stride-2 conv reads one)
    assert sd.weight.shape[1] == 5 * min(conv.kernel_size[0], conv.stride[0]) * min(conv.kernel_size[1], conv.stride[1])


def test_space_to_depth_reasons_and_errors():
    assert space_to_depth_reason(nn.ConvTranspose2d(2, 2, 3, 2)) == "not a Conv2d"
    assert space_to_depth_reason(nn.Conv2d(2, 2, 3)) == "stride 1"
    assert "grouped" in space_to_depth_reason(nn.Conv2d(4, 4, 3, 2, groups=2))  # depthwise stays as it is
    assert "dilated" in space_to_depth_reason(nn.Conv2d(4, 4, 3, 2, dilation=2))
    assert space_to_depth_reason(nn.Conv2d(4, 4, 3, 2, 1)) is None
    with pytest.raises(ValueError, match="groups 1, dilation 1"):
        SpaceToDepthConv2d(nn.Conv2d(4, 4, 3, 2, groups=4))
    with pytest.raises(ValueError, match="fixed at 3 output channels, asked for 2"):
        SpaceToDepthConv2d(nn.Conv2d(4, 3, 3, 2, 1))(torch.rand(1, 4, 6, 6), 2)


# (padding, padding mode, H, W): the spaces' 3x3 layers (1, reflect / zeros), sizes that are and are not
# multiples of the output tile, no padding, wider padding, replicate, a 1-pixel output and a 1-pixel input
WINO_CASES = [(1, "reflect", 16, 16), (1, "zeros", 13, 11), (1, "reflect", 7, 9), (0, "zeros", 10, 7),
              (2, "zeros", 5, 6), (1, "replicate", 6, 10), (0, "zeros", 3, 3), (1, "zeros", 1, 1)]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("p,mode,h,w", WINO_CASES)
def test_winograd_matches_conv_float64(p, mode, h, w, bias, tile):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, 3, 1, p, bias=bias, padding_mode=mode).double()
    _same_in_float64(conv, WinogradConv2d(conv, tile), h, w)  # batch 2: tiles of both images


def test_winograd_float32_rounding_stays_near_direct():
    """F(4x4, 3x3)'s transforms (entries up to 8, and 1/24 in G) round more than a direct convolution. On a
    body-like layer (128 channels, unit-variance input), against float64 and relative to the output's
    largest value: direct 3e-7, F(2x2, 3x3) 5e-7, F(4x4, 3x3) 0.8-1.1e-5 (3 seeds); bounds 3x those."""
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect")
    x = torch.randn(1, 128, 24, 24)
    with torch.no_grad():
        want = conv.double()(x.double())
        conv.float()
        scale = want.abs().max().item()
        for tile, bound in ((4, 3e-5), (2, 1.5e-6)):
            err = (WinogradConv2d(conv, tile)(x).double() - want).abs().max().item()
            assert err < bound * scale, (tile, err, scale)


def test_winograd_reasons_and_errors():
    assert winograd_reason(nn.ConvTranspose2d(32, 32, 3)) == "not a Conv2d"
    assert "not 3x3" in winograd_reason(nn.Conv2d(32, 32, 5, padding=2))
    assert "not 3x3" in winograd_reason(nn.Conv2d(32, 32, 1))
    assert winograd_reason(nn.Conv2d(32, 32, 3, 2, 1)) == "strided"  # space-to-depth's case
    assert "grouped" in winograd_reason(nn.Conv2d(32, 32, 3, padding=1, groups=32))  # depthwise stays direct
    assert "dilated" in winograd_reason(nn.Conv2d(32, 32, 3, padding=2, dilation=2))
    assert "'same'" in winograd_reason(nn.Conv2d(32, 32, 3, padding="same"))
    n = WINOGRAD_MIN_WIDTH
    assert "narrow" in winograd_reason(nn.Conv2d(3, 2 * n, 3, padding=1))  # an RGB stem stays direct
    assert "narrow" in winograd_reason(nn.Conv2d(n - 8, n - 8, 3, padding=1))
    assert winograd_reason(nn.Conv2d(n, n, 3, padding=1)) is None
    assert winograd_reason(nn.Conv2d(n // 2 + n // 4, 3 * n // 2, 3, padding=1)) is None  # harmonic mean n
    assert "narrow" in winograd_reason(nn.Conv2d(n // 2, 4 * n, 3, padding=1))  # one side too narrow
    with pytest.raises(ValueError, match="stride 1, groups 1.*strided"):
        WinogradConv2d(nn.Conv2d(4, 4, 3, 2))
    with pytest.raises(ValueError, match="tile 3 unsupported"):
        WinogradConv2d(nn.Conv2d(4, 4, 3), tile=3)
    with pytest.raises(ValueError, match="fixed at 3 output channels, asked for 2"):
        WinogradConv2d(nn.Conv2d(4, 3, 3, padding=1))(torch.rand(1, 4, 6, 6), 2)


def test_for_tvm_runs_wide_3x3_convolutions_as_winograd():
    torch.manual_seed(0)
    w = WINOGRAD_MIN_WIDTH
    net = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1, padding_mode="reflect"),
                        nn.InstanceNorm2d(w), nn.Conv2d(w, w, 3, padding=1, groups=w), nn.Conv2d(w, 8, 1)).eval()
    rewritten = for_tvm(net)
    kinds = [type(m).__name__ for m in rewritten]
    assert kinds == ["Conv2d", "ReLU", "WinogradConv2d", "InstanceNorm2d", "Conv2d", "Conv2d"]
    x = torch.rand(2, 3, 19, 14)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), net(x), rtol=1e-5, atol=1e-5)
    # standard ops only (no convolution left in the Winograd layer): the rewritten network exports
    ep = torch.export.export(rewritten, (x,))
    convs = [n for n in ep.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert len(convs) == 3
    # a bare convolution is rewritten too (not only a network's children)
    conv = nn.Conv2d(w, w, 3, padding=1).eval()
    assert isinstance(for_tvm(conv), WinogradConv2d) and isinstance(for_tvm(nn.Conv2d(16, 8, 3, 2)), SpaceToDepthConv2d)
    assert isinstance(for_tvm(nn.ConvTranspose2d(8, 4, 3, 2)), SubPixelConvTranspose2d)
    assert for_tvm(nn.Conv2d(8, 8, 1)).__class__ is nn.Conv2d


def test_for_tvm_rewrites_a_translation_student_and_leaves_it_untouched():
    torch.manual_seed(0)
    net = derive(random_genotype(SearchSpace(get_config("translation-tiny")), random.Random(1))).eval()
    before = sum(isinstance(m, nn.ConvTranspose2d) for m in net.modules())
    strided = sum(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in net.modules())
    assert before == 2 and strided == 2  # the space's two upsampling and two downsampling layers
    rewritten = for_tvm(net)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in rewritten.modules())
    assert not any(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in rewritten.modules())
    assert sum(isinstance(m, SubPixelConvTranspose2d) for m in rewritten.modules()) == before
    assert sum(isinstance(m, SpaceToDepthConv2d) for m in rewritten.modules()) == strided
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in net.modules()) == before  # the original keeps them
    x = torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), net(x), rtol=1e-5, atol=1e-5)
    # standard ops only: the rewritten network exports
    ep = torch.export.export(rewritten, (x,))
    names = {getattr(n.target, "__name__", "") for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("conv_transpose" in n or "convolution_backward" in n for n in names)
    strides = [n.args[3] for n in ep.graph.nodes if n.op == "call_function" and "conv" in str(n.target)
               and len(n.args) > 3]
    assert strides and all(list(s) == [1, 1] for s in strides)


def test_subpixel_reasons_and_errors():
    assert subpixel_reason(nn.Conv2d(2, 2, 3)) == "not a ConvTranspose2d"
    assert "grouped" in subpixel_reason(nn.ConvTranspose2d(4, 4, 3, 2, groups=2))
    assert "dilated" in subpixel_reason(nn.ConvTranspose2d(4, 4, 3, 2, dilation=2))
    assert "stride 1" in subpixel_reason(nn.ConvTranspose2d(4, 4, 3, 1))
    with pytest.raises(ValueError, match="groups 1, dilation 1"):
        SubPixelConvTranspose2d(nn.ConvTranspose2d(4, 4, 3, 2, groups=2))
    sp = SubPixelConvTranspose2d(nn.ConvTranspose2d(4, 3, 3, 2, 1, 1))
    with pytest.raises(ValueError, match="fixed at 3 output channels, asked for 2"):
        sp(torch.rand(1, 4, 5, 5), 2)
