"""The supernet: every layer of a space as a mixed layer over its operators and widths.

- Operator weights are ``softmax(alpha)``; the weighted candidate sum goes through
  :func:`agd.ops.mixed_sum`.
- Widths use weights shared slimmable-style (the leading channels of the largest width). A width is
  sampled by straight-through Gumbel-softmax (AutoGAN-Distiller's choice; the forward runs at the sampled
  width only, the gradient reaches ``beta`` through the sample's gate), or taken in expectation (a soft
  channel mask at the largest width), or set to max / min / random / argmax for sandwich training.
- ``alpha`` and ``beta`` are the architecture parameters (``arch_parameters()``); everything else is a
  weight (``weight_parameters()``).
- :meth:`Supernet.expected_macs` is the differentiable expected cost under the current distributions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from agd.arch.genotype import Genotype, LayerChoice
from agd.io import AgdError
from agd.ops import EpilogueCandidate, mixed_epilogue, mixed_epilogue_backend, mixed_sum
from agd.ops.activations import EPILOGUE_ACTS, act_of
from agd.space.blocks import EpilogueParts
from agd.space.config import SpaceConfig
from agd.space.elastic import ElasticInstanceNorm2d
from agd.space.networks import build_network, init_residual_head
from agd.space.space import LayerSpec, SearchSpace, build_op, op_valid

OP_MODES = ("mixture", "sample", "argmax", "fixed")
WIDTH_MODES = ("gumbel", "expectation", "max", "min", "random", "argmax", "fixed")


@dataclass
class Sampling:
    """How the mixed layers choose, shared by all layers of a supernet."""

    ops: str = "mixture"
    widths: str = "gumbel"
    tau: float = 1.0

    def __post_init__(self) -> None:
        if self.ops not in OP_MODES:
            raise AgdError(f"sampling: ops mode {self.ops!r} is not one of {', '.join(OP_MODES)}")
        if self.widths not in WIDTH_MODES:
            raise AgdError(f"sampling: widths mode {self.widths!r} is not one of {', '.join(WIDTH_MODES)}")
        if not self.tau > 0:
            raise AgdError(f"sampling: temperature {self.tau} must be > 0")


@dataclass(frozen=True)
class TemperatureSchedule:
    """Gumbel-softmax temperature from ``start`` to ``end`` over ``steps``, exponential or linear."""

    start: float = 5.0
    end: float = 0.5
    steps: int = 1000
    kind: str = "exp"

    def at(self, step: int) -> float:
        t = min(max(step, 0), self.steps) / max(self.steps, 1)
        if self.kind == "exp":
            return self.start * (self.end / self.start) ** t
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        raise AgdError(f"temperature schedule: kind {self.kind!r} is not exp or linear")


def epilogue_candidate(parts: EpilogueParts) -> tuple[EpilogueCandidate, float | None, float | None] | None:
    """(the fused epilogue's description of a block's output, its norm eps or None, its LeakyReLU slope or
    None), or None when the block ends in something the fused epilogue does not do (e.g. tanh)."""
    norm, act = parts.norm, parts.act
    if norm is not None and (not isinstance(norm, ElasticInstanceNorm2d) or norm.track_running_stats):
        return None
    found = act_of(act)
    if found is None or found[0] not in EPILOGUE_ACTS:
        return None
    kind, slope = found[0], (found[1] if found[0] == "lrelu" else None)
    affine = norm is not None and norm.affine
    cand = EpilogueCandidate(parts.z, parts.shortcut, norm is not None, norm.weight if affine else None,
                             norm.bias if affine else None, kind)
    return cand, (float(norm.eps) if norm is not None else None), slope


class MixedLayer(nn.Module):
    def __init__(self, spec: LayerSpec, in_choices: tuple[int, ...], sampling: Sampling) -> None:
        super().__init__()
        self.spec, self.in_choices, self.widths = spec, in_choices, spec.widths
        projection = any(ci != co for ci in in_choices for co in spec.widths)
        c_in, c_out = max(in_choices), max(spec.widths)
        self.candidates = nn.ModuleDict({op: build_op(op, spec, c_in, c_out, projection=projection) for op in spec.ops})
        self.alpha = nn.Parameter(torch.zeros(len(spec.ops))) if len(spec.ops) > 1 else None
        self.beta = nn.Parameter(torch.zeros(len(spec.widths))) if len(spec.widths) > 1 else None
        self.sampling = sampling
        self.fixed: tuple[int, int] | None = None  # (operator index, width index)
        # how the candidates' epilogues and weighted sum run (agd.ops.EPILOGUE_BACKENDS): "auto" fuses them
        # with the Triton kernel on CUDA and keeps the plain per-candidate forward + mixed_sum elsewhere
        self.epilogue_backend = "auto"
        self.register_buffer("_masks", torch.stack([(torch.arange(c_out) < w).float() for w in spec.widths]),
                             persistent=False)

    # distributions ------------------------------------------------------------------
    def op_probs(self) -> torch.Tensor:
        if self.fixed is not None:
            return F.one_hot(torch.tensor(self.fixed[0]), len(self.spec.ops)).to(self._masks)
        return F.softmax(self.alpha, 0) if self.alpha is not None else self._masks.new_ones(1)

    def width_probs(self) -> torch.Tensor:
        if self.fixed is not None:
            return F.one_hot(torch.tensor(self.fixed[1]), len(self.widths)).to(self._masks)
        return F.softmax(self.beta, 0) if self.beta is not None else self._masks.new_ones(1)

    # forward ------------------------------------------------------------------------
    def _width(self) -> tuple[int, torch.Tensor | None]:
        """(index of the width to run at, the straight-through gate or None)."""
        s, n = self.sampling, len(self.widths)
        if self.fixed is not None and s.widths == "fixed":
            return self.fixed[1], None
        if n == 1:
            return 0, None
        mode = s.widths
        if mode == "fixed":
            raise AgdError(f"layer {self.spec.name}: widths mode 'fixed' needs a fixed genotype (Supernet.fix)")
        if mode == "max":
            return n - 1, None
        if mode == "min":
            return 0, None
        if mode == "random":
            return int(torch.randint(n, ())), None  # torch's RNG: checkpointed with the run
        if mode == "argmax":
            return int(self.beta.argmax()), None
        # gumbel: hard sample, straight-through gate of value 1
        soft = F.gumbel_softmax(self.beta, tau=s.tau, hard=False)
        j = int(soft.argmax())
        return j, 1.0 - soft[j].detach() + soft[j]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        ops = self.spec.ops
        soft_mask = None
        if s.widths == "expectation" and len(self.widths) > 1 and self.fixed is None:
            out_w, gate = max(self.widths), None
            soft_mask = (self.width_probs()[:, None] * self._masks).sum(0).to(x.dtype)
        else:
            j, gate = self._width()
            out_w = self.widths[j]

        mode = "fixed" if (s.ops == "fixed" or (self.fixed is not None and s.ops == "fixed")) else s.ops
        if len(ops) == 1:
            y = self.candidates[ops[0]](x, out_w)
        elif mode == "mixture":
            y, gate = self._mix(x, self.op_probs(), out_w, gate)
        elif mode == "fixed":
            if self.fixed is None:
                raise AgdError(f"layer {self.spec.name}: ops mode 'fixed' needs a fixed genotype (Supernet.fix)")
            onehot = F.one_hot(torch.tensor(self.fixed[0]), len(ops)).to(x.dtype).to(x.device)
            y, gate = self._mix(x, onehot, out_w, gate)
        elif mode == "sample":
            p = self.op_probs()
            k = int(torch.multinomial(p.detach(), 1))
            y = (1.0 - p[k].detach() + p[k]) * self.candidates[ops[k]](x, out_w)
        else:  # argmax
            y = self.candidates[ops[int(self.alpha.argmax())]](x, out_w)
        if soft_mask is not None:
            y = y * soft_mask.view(1, -1, 1, 1)
        if gate is not None:
            y = y * gate
        return y

    def _mix(self, x: torch.Tensor, weights: torch.Tensor, out_w: int,
             gate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weighted sum of every candidate at width ``out_w``: fused (the gate folded into the weights,
        so it returns gate None) or, for the "eager" backend or an unfusable candidate, per-candidate
        forward + mixed_sum (gate returned for the caller to apply)."""
        ops = self.spec.ops
        backend = mixed_epilogue_backend(x.device, self.epilogue_backend)
        if backend != "eager":
            described = [epilogue_candidate(self.candidates[op].epilogue_parts(x, out_w)) for op in ops]
            eps = {d[1] for d in described if d is not None and d[1] is not None}
            slopes = {d[2] for d in described if d is not None and d[2] is not None}
            if all(d is not None for d in described) and len(eps) <= 1 and len(slopes) <= 1:
                w = weights if gate is None else weights * gate
                y = mixed_epilogue(w, [d[0] for d in described], out_w, eps=eps.pop() if eps else 1e-5,
                                   slope=slopes.pop() if slopes else 0.2, backend=backend)
                return y, None
        return mixed_sum(weights, [self.candidates[op](x, out_w) for op in ops]), gate

    # choice -------------------------------------------------------------------------
    def best_choice(self, c_in: int) -> LayerChoice:
        """argmax width, then the most likely operator that is valid between ``c_in`` and it."""
        w = self.widths[int(self.width_probs().argmax())]
        order = torch.argsort(self.op_probs(), descending=True).tolist()
        op = next(self.spec.ops[k] for k in order if op_valid(self.spec.ops[k], self.spec, c_in, w))
        return LayerChoice(self.spec.name, op, w)


class Supernet(nn.Module):
    """A space's supernet: its generator topology with a :class:`MixedLayer` in every layer."""

    def __init__(self, space: SearchSpace | SpaceConfig) -> None:
        super().__init__()
        self.space = space if isinstance(space, SearchSpace) else SearchSpace(space)
        self.sampling = Sampling()
        mixed = [MixedLayer(spec, self.space.in_choices(i), self.sampling) for i, spec in enumerate(self.space.layers)]
        self.net = build_network(self.space, mixed)
        init_residual_head(self.space, mixed[-1])
        self._tables: dict[tuple[int, int], list[torch.Tensor]] = {}

    @property
    def mixed_layers(self) -> list[MixedLayer]:
        return list(self.net.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def set_sampling(self, **changes) -> Sampling:
        """Change the sampling modes in place (``ops=``, ``widths=``, ``tau=``); returns them."""
        names = {f.name for f in fields(Sampling)}
        unknown = set(changes) - names
        if unknown:
            raise AgdError(f"sampling: unknown setting(s) {', '.join(sorted(unknown))}")
        new = Sampling(**{**{n: getattr(self.sampling, n) for n in names}, **changes})
        for n in names:
            setattr(self.sampling, n, getattr(new, n))
        return self.sampling

    # parameters ---------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.mixed_layers for p in (m.alpha, m.beta) if p is not None]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # genotypes ----------------------------------------------------------------------
    def fix(self, g: Genotype) -> None:
        """Fix every layer to the genotype's choices (one-hot operator weights, fixed widths)."""
        self.space.validate(g)
        for m, ch in zip(self.mixed_layers, g.layers):
            m.fixed = (m.spec.ops.index(ch.op), m.widths.index(ch.width))
        self.set_sampling(ops="fixed", widths="fixed")

    def unfix(self, **sampling) -> None:
        for m in self.mixed_layers:
            m.fixed = None
        self.set_sampling(**({"ops": "mixture", "widths": "gumbel"} | sampling))

    def genotype(self) -> Genotype:
        """The most likely architecture under the current alpha/beta (identity only where valid)."""
        layers, c_in = [], self.space.config.in_ch
        for m in self.mixed_layers:
            ch = m.best_choice(c_in)
            layers.append(ch)
            c_in = ch.width
        return Genotype(self.space.config, layers)

    # cost ---------------------------------------------------------------------------
    def expected_macs(self, hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Differentiable expected MACs (total, per layer) at input size ``hw`` (the space's reference size
        by default); see :meth:`expected_cost`."""
        key = tuple(hw or self.space.config.reference_size)
        if key not in self._tables:
            self._tables[key] = [t.nan_to_num(0.0) for t in self.space.macs_tables(key)]
        return self.expected_cost(self._tables[key])

    def expected_cost(self, tables: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Differentiable expected cost (total, per layer) under the current operator and width
        distributions (one-hot where fixed), from per-layer cost tables shaped like
        :meth:`SearchSpace.macs_tables` (operators x input-width choices x output-width choices; MACs, or
        milliseconds from a latency table). Each layer's input-width distribution is the previous layer's
        output-width distribution. NaN entries (identity between unequal widths) must be replaced by the
        caller (0 for MACs: the supernet pads)."""
        if len(tables) != len(self.mixed_layers):
            raise AgdError(f"expected cost: {len(tables)} tables for {len(self.mixed_layers)} layers")
        dev = self.mixed_layers[0]._masks.device
        q_in = torch.ones(1, dtype=torch.float64, device=dev)
        per_layer, total = {}, torch.zeros((), dtype=torch.float64, device=dev)
        for m, table in zip(self.mixed_layers, tables):
            p = m.op_probs().to(torch.float64)
            q = m.width_probs().to(torch.float64)
            e = torch.einsum("k,i,j,kij->", p, q_in, q, table.to(dev, torch.float64))
            per_layer[m.spec.name] = e
            total = total + e
            q_in = q
        return total, per_layer
