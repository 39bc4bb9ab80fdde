"""The search spaces: supernet ≡ derived network, export, expected MACs, extremes, genotypes, gradients."""

import itertools
import json
import random

import pytest
import torch

from agd.arch import Genotype, LayerChoice, derive, macs_extremes, random_genotype
from agd.cost import count_macs
from agd.io import AgdError
from agd.search.supernet import Supernet, TemperatureSchedule
from agd.space import PRESETS, SearchSpace, get_config, op_valid, sr_space_for_scale, up_factors, width_choices
from agd.space.blocks import ConvNormAct, DwsBlock, Identity, ResBlock, Style

# small inputs for forward passes (odd sizes); the reference size for MACs
FORWARD_HW = {"translation": (20, 28), "sr-x4": (9, 11), "sr-x3": (8, 9), "sr-x2": (7, 10),
              "translation-tiny": (17, 23), "sr-tiny": (7, 9), "sr-tiny-x3": (7, 9)}
N_RANDOM = 100


def _config(name: str):
    """A preset by name, or ``PRESET-xS`` for a preset without that name: the preset at scale S (``sr-tiny-x3``)."""
    if name in PRESETS:
        return get_config(name)
    preset, _, scale = name.rpartition("-x")
    return get_config(preset, scale=int(scale))


def _randomised_supernet(name: str) -> Supernet:
    torch.manual_seed(0)
    sn = Supernet(SearchSpace(_config(name)))
    with torch.no_grad():  # non-trivial norms and biases too
        for p in sn.weight_parameters():
            p.normal_(0.0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return sn.eval()


@pytest.mark.parametrize("name", ["translation", "sr-x4", "sr-tiny-x3"])
def test_random_genotypes_supernet_equals_derived_and_exports(name):
    """Acceptance, 100 random genotypes per space: (a) one-hot supernet ≡ derived network with inherited
    weights (max abs diff <= 1e-5, float32), (b) torch.export succeeds on the derived network, (c) the
    expected MACs at one-hot α equal the cost model's count of the derived network within 0.1 %."""
    sn = _randomised_supernet(name)
    space = sn.space
    rng = random.Random(1234)
    x = torch.rand(1, 3, *FORWARD_HW[name], generator=torch.Generator().manual_seed(0))
    ref_shape = (1, 3, *space.config.reference_size)
    worst = 0.0
    ops_seen = set()
    for _ in range(N_RANDOM):
        g = random_genotype(space, rng)
        ops_seen |= {c.op for c in g.layers}
        sn.fix(g)
        net = derive(g, sn).eval()
        with torch.no_grad():
            a, b = sn(x), net(x)
        worst = max(worst, float((a - b).abs().max()))
        assert worst <= 1e-5, g.to_json()
        ep = torch.export.export(net, (x,))
        assert torch.allclose(ep.module()(x), b, atol=1e-6)
        expected, per_layer = sn.expected_macs()
        with torch.device("meta"):
            counted = count_macs(derive(g), ref_shape)
        assert abs(expected.item() - counted) <= 1e-3 * counted, (expected.item(), counted)
        assert expected.item() == pytest.approx(space.genotype_macs(g))
        assert set(per_layer) == {s.name for s in space.layers}
    assert ops_seen >= set(space.config.ops)


def test_derived_network_is_standard_ops_only():
    g = Genotype.load("examples/translation_r9_small.json")
    net = derive(g)
    with_weights = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.InstanceNorm2d)
    for m in net.modules():
        if list(m.parameters(recurse=False)):
            assert isinstance(m, with_weights), type(m)
    ep = torch.export.export(net.eval(), (torch.rand(1, 3, 32, 32),))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("agd" in t for t in targets), targets


@pytest.mark.parametrize("name", ["translation", "sr-x4", "sr-x3", "sr-x2", "translation-tiny", "sr-tiny",
                                  "sr-tiny-x3"])
def test_macs_extremes_match_brute_force(name):
    """The printed min/max equal an independent computation. For the tiny spaces: exhaustive over every
    architecture, each summed from the blocks' own MACs formulas (no DP), with the counter run on the derived
    networks of the extremes and of 40 random architectures to tie those sums to real modules (all 29,200
    sr-tiny networks counted one by one took 10 minutes). For the full spaces the DP's argmin/argmax genotypes
    are counted and no random genotype beats them."""
    # exhaustive enumeration on the tiny translation space with a fixed stem/header keeps it fast
    space = SearchSpace(get_config(name, search_stem_header=False) if name == "translation-tiny" else _config(name))
    (mn, gmin), (mx, gmax) = macs_extremes(space)
    ref = (1, 3, *space.config.reference_size)
    with torch.device("meta"):
        assert count_macs(derive(gmin), ref) == mn
        assert count_macs(derive(gmax), ref) == mx
    rng = random.Random(7)
    if "tiny" in name:
        sizes = space.input_sizes()
        counts = []
        per_layer = [[(op, w) for op in s.ops for w in s.widths] for s in space.layers]
        for combo in itertools.product(*per_layer):
            c_in, ok, total = space.config.in_ch, True, 0
            for i, (spec, (op, w)) in enumerate(zip(space.layers, combo)):
                ok = ok and op_valid(op, spec, c_in, w)
                if not ok:
                    break
                total += space.op_macs(i, op, c_in, w, sizes[i])
                c_in = w
            if ok:
                counts.append(total)
        assert len(counts) == space.num_architectures()
        assert (min(counts), max(counts)) == (mn, mx)
        for _ in range(40):
            g = random_genotype(space, rng)
            with torch.device("meta"):
                assert count_macs(derive(g), ref) == space.genotype_macs(g), g.to_json()
    else:
        for _ in range(200):
            m = space.genotype_macs(random_genotype(space, rng))
            assert mn <= m <= mx


def test_space_facts():
    t = SearchSpace(get_config("translation"))
    assert width_choices(256, get_config("translation").width_ratios, 8) == (88, 128, 168, 216, 256)
    assert width_choices(64, get_config("translation").width_ratios, 8) == (24, 32, 40, 56, 64)
    assert [s.name for s in t.layers][:4] == ["stem", "down1", "down2", "layer1"] and len(t.layers) == 15
    # the largest translation architecture is CycleGAN's ResNet-9 without conv biases
    (_, _), (mx, gmax) = macs_extremes(t)
    assert {c.op for c in gmax.layers[3:12]} == {"resblock"}
    assert mx / 1e9 == pytest.approx(49.55, abs=0.01)
    sr = SearchSpace(get_config("sr-x4"))
    assert len(sr.layers) == 1 + 25 + 1 + 2 + 2
    assert sr.layers[5].widths == (64,) and sr.layers[1].widths == (24, 32, 40, 56, 64)
    assert sr.input_sizes((10, 12))[-1] == (40, 48)


def test_sr_scales_upsample_in_rounds_of_their_factors():
    """x2: one nearest-x2 round, x3: one nearest-x3 round, x4: two x2 rounds, x8: three; one conv_up layer per
    round, running at the size after its round; other scales are refused, naming the supported ones."""
    assert [up_factors(s) for s in (1, 2, 3, 4, 8)] == [(), (2,), (3,), (2, 2), (2, 2, 2)]
    for bad in (0, 5, 6, 16, True):
        with pytest.raises(AgdError, match=r"SR scale \S+ is not supported \(supported: 1, 2, 3, 4, 8\)"):
            get_config("sr-x4", scale=bad)
    expected = {2: [(20, 24)], 3: [(30, 36)], 4: [(20, 24), (40, 48)], 8: [(20, 24), (40, 48), (80, 96)]}
    for scale, ups in expected.items():
        space = SearchSpace(get_config("sr-x4", scale=scale) if scale == 8 else get_config(f"sr-x{scale}"))
        assert space.scale == scale
        sizes = dict(zip((s.name for s in space.layers), space.input_sizes((10, 12))))
        assert [n for n in sizes if n.startswith("conv_up")] == [f"conv_up{i + 1}" for i in range(len(ups))]
        assert [sizes[f"conv_up{i + 1}"] for i in range(len(ups))] == ups
        assert sizes["conv_body"] == (10, 12) and sizes["conv_hr"] == sizes["conv_last"] == (10 * scale, 12 * scale)
        assert len(space.layers) == 1 + 25 + 1 + len(ups) + 2
    assert len(SearchSpace(get_config("sr-x4", scale=1)).input_sizes((10, 12))) == 1 + 25 + 1 + 2
    from agd.space.networks import SRGenerator

    with pytest.raises(ValueError, match="up_factors 2 must be a sequence"):  # the old n_up argument
        SRGenerator(torch.nn.ModuleList([torch.nn.Identity()] * 6), 1, 1, 2)


def test_every_preset_sr_scale_has_its_space():
    """The space a teacher of each scale is searched in by default (the search and command layers ask
    sr_space_for_scale); a scale without a preset is an error naming those with one."""
    assert {s: sr_space_for_scale(s) for s in (2, 3, 4)} == {2: "sr-x2", 3: "sr-x3", 4: "sr-x4"}
    for s in (2, 3, 4):
        cfg = get_config(sr_space_for_scale(s))
        assert cfg.kind == "sr" and cfg.scale == s and cfg == get_config("sr-x4", scale=s)
    for bad in (1, 5, 8):
        with pytest.raises(AgdError, match=rf"no SR search space for x{bad}; spaces exist for x2, x3, x4"):
            sr_space_for_scale(bad)


def _table_macs(space: SearchSpace, tables, g: Genotype) -> int:
    """A genotype's MACs read off the space's cost tables (the entries the search's expected cost uses)."""
    total, c_in = 0, space.config.in_ch
    for i, (spec, ch) in enumerate(zip(space.layers, g.layers)):
        t = tables[i][spec.ops.index(ch.op), space.in_choices(i).index(c_in), spec.widths.index(ch.width)]
        assert not torch.isnan(t), (spec.name, ch)
        total += int(t)
        c_in = ch.width
    return total


@pytest.mark.parametrize("name", ["sr-x2", "sr-x3", "sr-x4", "sr-tiny-x3"])
def test_sr_student_upscales_by_its_scale_and_costs_its_table_entries(name):
    """A derived student maps H x W to sH x sW (the bare network and Student alike), and the MACs counted
    on it equal its entries of the space's cost tables, at the reference size and at an odd one."""
    from agd.arch.student import Student

    space = SearchSpace(_config(name))
    s, hw = space.scale, (11, 7)
    tables = {space.config.reference_size: space.macs_tables(), hw: space.macs_tables(hw)}
    rng = random.Random(3)
    x = torch.rand(1, 3, 5, 7)
    for _ in range(4):
        g = random_genotype(space, rng)
        net = derive(g).eval()
        with torch.no_grad():
            y, ys = net(x), Student(g, net)(x)
        assert y.shape == ys.shape == (1, 3, 5 * s, 7 * s)
        for size, t in tables.items():
            with torch.device("meta"):
                counted = count_macs(derive(g), (1, 3, *size))
            assert counted == _table_macs(space, t, g) == space.genotype_macs(g, size), (name, size, g.to_json())


def _nearest(t: torch.Tensor, f: int) -> torch.Tensor:
    """Nearest-neighbour upsampling by an integer factor, by repeating rows and columns."""
    return t.repeat_interleave(f, dim=2).repeat_interleave(f, dim=3)


def _x2_round_forward(net, x: torch.Tensor) -> torch.Tensor:
    """The SR generator's forward as written before x3 existed, by layer index: head, cells of
    ``layers_per_cell`` body layers (residual, times ``cell_scale``), the body conv, one nearest-x2 round per
    conv_up layer, conv_hr, conv_last, and the input skip at 2 ** rounds."""
    import torch.nn.functional as F

    L, k, per = list(net.layers), net.n_cells * net.layers_per_cell, net.layers_per_cell
    body, ups = L[1:1 + k], L[2 + k:-2]
    trunk = L[0](x)
    h = trunk
    for c in range(net.n_cells):
        y = h
        for m in body[c * per:(c + 1) * per]:
            y = m(y)
        h = h + net.cell_scale * y
    fea = trunk + L[1 + k](h)
    for m in ups:
        fea = m(_nearest(fea, 2))
    out = L[-1](L[-2](fea))
    f = 2 ** len(ups)
    if net.input_skip == "nearest":
        return out + _nearest(x, f)
    if net.input_skip == "none":
        return out
    return out + F.interpolate(x, scale_factor=float(f), mode=net.input_skip, align_corners=False)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("skip", [None, "bicubic", "nearest"])
def test_x2_and_x4_genotype_files_build_the_networks_they_did(scale, skip):
    """Genotype files written when SR upsampled in x2 rounds only (examples/sr_x4_small.json, and the same
    at x2 without conv_up2; no input_skip field, or one) load, and build the same layers, parameter names and
    shapes and the same output bit for bit as the x2-round forward."""
    from pathlib import Path

    d = json.loads(Path("examples/sr_x4_small.json").read_text())
    if scale == 2:
        d["scale"] = d["space"]["scale"] = 2
        d["layers"] = [c for c in d["layers"] if c["name"] != "conv_up2"]
    if skip:
        d["space"]["input_skip"] = skip
    g = Genotype.from_dict(d)
    assert g.scale == scale and g.config.input_skip == (skip or "none")
    torch.manual_seed(0)
    net = derive(g).eval()
    assert net.up_factors == (2,) * (scale // 2) and net.n_up == scale // 2
    names = [c.name for c in g.layers]
    assert [n for n in names if n.startswith("conv_up")] == [f"conv_up{i + 1}" for i in range(scale // 2)]
    assert len(net.layers) == len(names) and all(k.startswith("layers.") for k in net.state_dict())
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), _x2_round_forward(net, x))


def test_block_macs_formulas_match_the_cost_model():
    rng = random.Random(0)
    style = Style("instance", True, "relu", "reflect", False)
    for _ in range(20):
        ci, co = rng.choice([8, 12, 16]), rng.choice([8, 12, 16])
        h, w = rng.choice([9, 16]), rng.choice([7, 12])
        for block in (ConvNormAct(ci, co, 3, style, stride=2), ConvNormAct(ci, co, 3, style, dilation=2),
                      ConvNormAct(ci, co, 3, style, stride=2, transposed=True), ConvNormAct(ci, ci, 3, style, depthwise=True),
                      ResBlock(ci, co, style), DwsBlock(ci, co, style, expansion=rng.choice([1, 3, 6]))):
            cout = ci if isinstance(block, ConvNormAct) and block.depthwise else co
            assert block.macs(ci, cout, h, w) == count_macs(block, (1, ci, h, w)), type(block)
    assert Identity.macs(8, 8, 4, 4) == 0


def test_slimmable_blocks_run_narrower_with_leading_channels():
    """A block built at max widths and run at (ci, co) equals one built at (ci, co) with the leading slices."""
    from agd.space.elastic import slice_into

    torch.manual_seed(0)
    style = Style("instance", True, "lrelu", "reflect", False)
    for make in (lambda a, b, p=None: ResBlock(a, b, style, projection=p),
                 lambda a, b, p=None: DwsBlock(a, b, style, expansion=3, projection=p),
                 lambda a, b, p=None: ConvNormAct(a, b, 3, style)):
        big = make(16, 24, True)
        with torch.no_grad():
            for p in big.parameters():
                p.normal_()
        for ci, co in [(8, 12), (12, 12), (16, 8)]:
            small = make(ci, co)
            slice_into(small, big)
            x = torch.randn(2, ci, 9, 7)
            torch.testing.assert_close(big(x, co), small(x), atol=1e-5, rtol=1e-5)


def test_gradients_reach_alpha_beta_and_weights():
    sn = Supernet(SearchSpace(get_config("translation-tiny")))
    x = torch.rand(2, 3, 17, 23)
    for widths in ("gumbel", "expectation"):
        for ops in ("mixture", "sample"):
            sn.zero_grad()
            sn.unfix(ops=ops, widths=widths, tau=1.0)
            torch.manual_seed(3)
            loss = sn(x).square().mean() + 1e-12 * sn.expected_macs()[0]
            loss.backward()
            alphas = [m.alpha for m in sn.mixed_layers if m.alpha is not None]
            betas = [m.beta for m in sn.mixed_layers if m.beta is not None]
            assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alphas), (ops, widths)
            assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in betas), (ops, widths)
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sn.weight_parameters())
    assert {id(p) for p in sn.arch_parameters()}.isdisjoint({id(p) for p in sn.weight_parameters()})
    n_all = sum(1 for _ in sn.parameters())
    assert len(sn.arch_parameters()) + len(sn.weight_parameters()) == n_all


def test_expected_macs_gradient_direction():
    """Raising the probability of the cheapest width lowers the expected MACs."""
    sn = Supernet(SearchSpace(get_config("translation-tiny")))
    e0, _ = sn.expected_macs()
    e0.backward()
    m = sn.mixed_layers[3]  # a searchable body layer
    assert m.beta.grad[0] < m.beta.grad[-1]  # cheaper width has the smaller gradient
    with torch.no_grad():
        for layer in sn.mixed_layers:
            if layer.beta is not None:
                layer.beta[0] = 10.0
    assert sn.expected_macs()[0] < e0


@pytest.mark.parametrize("name", ["sr-tiny", "translation-tiny"])
@pytest.mark.parametrize("mode", ["max", "min", "random", "argmax"])
def test_sandwich_width_modes(mode, name, monkeypatch):
    """Each width mode runs every layer at the width it names (max, min, a random one, the argmax of beta),
    and the output equals the derived network of those widths (and the argmax operators) with the supernet's
    weights sliced into it, in float64."""
    from agd.search import supernet as S

    sn = _randomised_supernet(name).double()
    with torch.no_grad():
        for m in sn.mixed_layers:
            if m.alpha is not None:
                m.alpha.normal_()
                if "identity" in m.spec.ops:  # an identity between unequal widths is no derived layer
                    m.alpha[m.spec.ops.index("identity")] = -10.0
            if m.beta is not None:
                m.beta.normal_()
    ran = {}
    real = S.MixedLayer._width

    def spy(layer):
        j, gate = real(layer)
        ran[layer.spec.name] = layer.widths[j]
        return j, gate

    monkeypatch.setattr(S.MixedLayer, "_width", spy)
    sn.set_sampling(ops="argmax", widths=mode)
    torch.manual_seed(1)
    x = torch.rand(1, 3, *FORWARD_HW[name], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = sn(x)
    chosen = [LayerChoice(m.spec.name, m.spec.ops[int(m.alpha.argmax())] if m.alpha is not None else m.spec.ops[0],
                          ran[m.spec.name]) for m in sn.mixed_layers]
    pick = {"max": lambda m: m.widths[-1], "min": lambda m: m.widths[0],
            "argmax": lambda m: m.widths[int(m.beta.argmax())] if m.beta is not None else m.widths[0]}.get(mode)
    if pick is not None:
        assert [c.width for c in chosen] == [pick(m) for m in sn.mixed_layers]
    else:
        assert len({c.width for c in chosen}) > 1
    g = Genotype(sn.space.config, chosen)
    with torch.no_grad():
        want = derive(g, sn).double().eval()(x)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)


def test_genotype_json_roundtrip_and_errors(tmp_path):
    space = SearchSpace(get_config("translation"))
    g = random_genotype(space, random.Random(0))
    p = g.save(tmp_path / "g.json")
    assert Genotype.load(p) == g
    d = json.loads(p.read_text())
    assert d["format"] == "agd-genotype" and d["version"] == 1 and d["task"] == "translation"

    def broken(edit):
        dd = json.loads(p.read_text())
        edit(dd)
        q = tmp_path / "bad.json"
        q.write_text(json.dumps(dd))
        return q

    cases = [
        (lambda dd: dd["layers"][4].update(op="conv9x9"), r"layer layer2: operator 'conv9x9' is not one of conv1x1, conv3x3"),
        (lambda dd: dd["layers"][4].update(width=100), r"layer layer2: width 100 is not one of 88, 128, 168, 216, 256"),
        (lambda dd: dd["layers"].pop(), r"14 layers, the translation space has 15"),
        (lambda dd: dd.update(version=7), r"version 7 is not supported"),
        (lambda dd: dd["space"].update(kind="audio"), r"kind 'audio'"),
        (lambda dd: dd["space"].update(ops=["conv3x3", "warp"]), r"unknown operator"),
        (lambda dd: dd["layers"][3].update(width=256, op="identity") or dd["layers"][2].update(width=128),
         r"layer layer1: identity needs equal widths, got 128 -> 256"),
    ]
    for edit, message in cases:
        with pytest.raises(AgdError, match=message):
            Genotype.load(broken(edit))
    with pytest.raises(AgdError, match="no such file"):
        Genotype.load(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(AgdError, match="invalid JSON"):
        Genotype.load(tmp_path / "x.json")


def test_supernet_genotype_is_argmax_and_valid():
    """Supernet.genotype() takes torch.argmax of every beta, and of every alpha except where the argmax
    operator is an identity between unequal widths: there the next most likely operator."""
    torch.manual_seed(0)
    sn = Supernet(SearchSpace(get_config("translation")))
    with torch.no_grad():
        for m in sn.mixed_layers:
            if m.alpha is not None:
                m.alpha.normal_()
                m.alpha[m.spec.ops.index("identity")] = 5.0  # identity preferred everywhere
            if m.beta is not None:
                m.beta.normal_()
    g = sn.genotype()
    sn.space.validate(g)
    c_in, dropped = sn.space.config.in_ch, 0
    for m, ch in zip(sn.mixed_layers, g.layers):
        assert ch.width == m.widths[int(torch.argmax(m.beta))] if m.beta is not None else ch.width == m.widths[0]
        if m.alpha is None:
            assert ch.op == m.spec.ops[0]
        elif ch.op != m.spec.ops[int(torch.argmax(m.alpha))]:
            assert m.spec.ops[int(torch.argmax(m.alpha))] == "identity" and c_in != ch.width
            second = torch.argsort(m.alpha, descending=True)[1]
            assert ch.op == m.spec.ops[int(second)]
            dropped += 1
        c_in = ch.width
    assert 0 < dropped < sum(m.alpha is not None for m in sn.mixed_layers)  # both cases were met


def test_examples_are_valid_and_documented():
    from pathlib import Path

    readme = Path("README.md").read_text()
    files = sorted(Path("examples").glob("*.json"))
    assert {Genotype.load(f).task for f in files} == {"translation", "sr"}
    for f in files:
        assert f.name in readme


def test_temperature_schedule():
    s = TemperatureSchedule(5.0, 0.5, 100)
    assert s.at(0) == 5.0 and s.at(100) == pytest.approx(0.5) and s.at(1000) == pytest.approx(0.5)
    assert 0.5 < s.at(50) < 5.0
    with pytest.raises(AgdError):
        Supernet(SearchSpace(get_config("sr-tiny"))).set_sampling(widths="sometimes")


def test_cli_space_and_arch_show(tmp_path, capsys):
    from agd.cli import main

    def run(*args):
        try:
            main(list(args))
        except SystemExit as e:
            assert e.code in (0, None), capsys.readouterr().err
        return capsys.readouterr().out

    s = json.loads(run("space", "show", "--task", "translation", "--json"))
    space = SearchSpace(get_config("translation"))
    (mn, _), (mx, _) = macs_extremes(space)
    assert (s["min_macs"], s["max_macs"]) == (mn, mx) and s["architectures"] == space.num_architectures()
    assert s["teacher_macs"] == pytest.approx(49.55e9, rel=1e-3)
    assert "architectures" in run("space", "show", "--task", "sr")
    out = json.loads(run("arch", "show", "examples/sr_x4_small.json", "--png", str(tmp_path / "a.png"), "--json"))
    g = Genotype.load("examples/sr_x4_small.json")
    assert out["total"]["macs"] == SearchSpace(g.config).genotype_macs(g)
    assert sum(r["macs"] for r in out["layers"]) == out["total"]["macs"]
    from PIL import Image

    assert Image.open(tmp_path / "a.png").size[0] > 400
    assert "total" in run("arch", "show", "examples/translation_r9_small.json")


def test_cli_space_show_sr_x3(capsys):
    """``agd space show --task sr-x3``: one conv_up layer at 3x the input, the space's own extremes; the
    default SR teacher is x4, so no teacher MACs are compared."""
    from cli_helpers import run_cli

    code, out, err = run_cli(capsys, "space", "show", "--task", "sr-x3", "--size", "20x24", "--json")
    assert code == 0, err
    s = json.loads(out)
    space = SearchSpace(get_config("sr-x3"))
    assert s["space"] == "sr-x3" and s["kind"] == "sr" and s["scale"] == 3 and s["input"] == [1, 3, 20, 24]
    sizes = {r["name"]: r["input_size"] for r in s["layers"]}
    assert [n for n in sizes if n.startswith("conv_up")] == ["conv_up1"]
    assert sizes["conv_body"] == [20, 24] and sizes["conv_up1"] == sizes["conv_last"] == [60, 72]
    (mn, gmin), (mx, _) = macs_extremes(space, (20, 24))
    assert (s["min_macs"], s["max_macs"]) == (mn, mx) and s["architectures"] == space.num_architectures()
    assert s["teacher_macs"] is None
    with torch.device("meta"):
        assert count_macs(derive(Genotype.from_dict(s["min_genotype"])), (1, 3, 20, 24)) == mn
    code, out, err = run_cli(capsys, "space", "show", "--task", "sr-x3")
    assert code == 0, err
    assert "sr-x3" in out and "x3" in out and "768x768" in out
