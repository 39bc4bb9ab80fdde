import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from agd.arch import random_genotype
from agd.cost import count, count_macs, count_params, format_macs
from agd.io import AgdError


def _flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as f:
        model(x)
    return f.get_total_flops() // 2


class _Mixed(nn.Module):
    """Conv, strided, dilated, grouped, depthwise, transposed, linear, matmul and attention in one net."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 5, stride=2, padding=2, dilation=1)
        self.b = nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12)
        self.c = nn.Conv2d(12, 8, 3, groups=4, bias=False)
        self.up = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = self.up(self.c(self.b(self.a(x))))
        t = y.flatten(2).transpose(1, 2)  # (N, L, 6)
        q = self.fc(t)
        att = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return att.sum() + (q @ q.transpose(1, 2)).sum()


@pytest.mark.parametrize("shape", [(1, 3, 17, 23), (2, 3, 32, 31)])
def test_matches_torch_flop_counter_on_odd_shapes(shape):
    m = _Mixed().eval()
    x = torch.randn(shape)
    ours = count(m, shape)
    ref = _flop_counter_macs(m, x)
    assert ours.macs == ref
    assert count(m, x, device="cpu").macs == ref  # real execution gives the same count
    assert sum(ours.by_module.values()) == ours.macs


def test_conv_formula_by_hand():
    m = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    # out 1x6x5x6 ; each output: (4/2)*3*3 MACs
    assert count_macs(m, (1, 4, 9, 11)) == 6 * 5 * 6 * 2 * 9


def test_transposed_conventions_by_hand():
    m = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    n, h, w = 2, 7, 5
    true = n * 8 * h * w * 4 * 9
    per_out = n * 4 * (2 * h) * (2 * w) * 8 * 9
    assert count_macs(m, (n, 8, h, w)) == true
    assert count_macs(m, (n, 8, h, w), transposed="output") == per_out
    with pytest.raises(AgdError, match="transposed convention"):
        count(m, (1, 8, 4, 4), transposed="per-pixel")


def test_meta_run_leaves_model_untouched():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    count(m, (1, 3, 8, 8))
    assert m.training and all(p.device.type == "cpu" for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_params_count_shared_once_and_trainable():
    conv = nn.Conv2d(3, 3, 1)
    m = nn.Sequential(conv, conv, nn.BatchNorm2d(3))
    assert count_params(m) == 12 + 6  # BN running stats are buffers, not parameters
    m[2].weight.requires_grad_(False)
    assert count_params(m, trainable_only=True) == 12 + 3


def test_bad_inputs_are_named():
    with pytest.raises(AgdError, match="inputs must be"):
        count(nn.Identity(), "1x3x8x8")
    with pytest.raises(AgdError, match="meta tensors"):
        count(nn.Linear(5, 2), (1, 4))


def test_format():
    assert format_macs(1_174_850_000_000) == "1.17 T"
    assert format_macs(49_550_000_000) == "49.55 G"


def test_rrdbnet_reference_count():
    from agd.teachers import RRDBNet

    c = count(RRDBNet(nf=64, nb=23, gc=32, scale=4), (1, 3, 256, 256))
    assert c.macs / 1e9 == pytest.approx(1174.85, rel=1e-3)
    assert c.params / 1e6 == pytest.approx(16.698, abs=0.0005)


def test_cyclegan_resnet9_reference_counts():
    from agd.teachers import ResnetGenerator

    g = ResnetGenerator(ngf=64, n_blocks=9, norm_affine=True)
    assert count_macs(g, (1, 3, 256, 256)) / 1e9 == pytest.approx(49.55, abs=0.005)
    assert count_macs(g, (1, 3, 256, 256), transposed="output") / 1e9 == pytest.approx(56.80, rel=1e-3)
    assert count_params(g) == 11_388_675


@pytest.mark.parametrize("name,scale", [("sr-tiny", 2), ("sr-tiny", 3), ("sr-tiny", 4), ("sr-x3", 3), ("sr-x2", 2)])
def test_sr_students_count_exactly_what_their_space_tables_say(name, scale):
    """A derived SR student at x2 / x3 / x4: the MACs counted per layer on meta tensors equal the space's
    cost-table entries of its choices, and the total equals torch's FlopCounterMode on a real forward (the
    nearest-x3 upsampling and the bicubic input skip count nothing)."""
    import random

    from agd.arch import derive
    from agd.space import SearchSpace, get_config

    space = SearchSpace(get_config(name, scale=scale))
    hw = (10, 13)
    tables = space.macs_tables(hw)
    rng = random.Random(11)
    for k in range(3):
        g = random_genotype(space, rng)
        net = derive(g).eval()
        c = count(net, (1, 3, *hw))
        per_layer: dict[int, int] = {}
        for mod, macs in c.by_module.items():
            parts = mod.split(".")
            assert parts[0] == "layers", mod  # nothing outside the layers (upsampling, skip) costs MACs
            per_layer[int(parts[1])] = per_layer.get(int(parts[1]), 0) + macs
        c_in = space.config.in_ch
        for i, (spec, ch) in enumerate(zip(space.layers, g.layers)):
            entry = tables[i][spec.ops.index(ch.op), space.in_choices(i).index(c_in), spec.widths.index(ch.width)]
            assert per_layer.get(i, 0) == int(entry), (spec.name, ch)
            c_in = ch.width
        assert c.macs == space.genotype_macs(g, hw)
        if k == 0:  # real execution (about a second each on a CPU)
            x = torch.rand(1, 3, *hw)
            assert c.macs == _flop_counter_macs(net, x) == count_macs(net, x, device="cpu")
            with torch.no_grad():
                assert net(x).shape == (1, 3, hw[0] * scale, hw[1] * scale)
