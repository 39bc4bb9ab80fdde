"""PyTorch → Relax: ``torch.export`` with static shapes, then TVM's ``from_exported_program``.

Operators the TVM frontend cannot convert are found before conversion and named with the module
(layer) they come from, instead of TVM's bare assertion. The exported graph is the model after
:func:`agd.tuning.rewrite.for_tvm` (sub-pixel, space-to-depth and Winograd forms of convolutions); the
reference output is the original model's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agd.io import AgdError
from agd.tuning.rewrite import for_tvm
from agd.tuning.tvm_env import ExportedProgramImporter, from_exported_program, relax


@dataclass
class RelaxProgram:
    """A Relax module whose ``main`` takes the input then the parameters, and those parameters."""

    mod: Any  # tvm.IRModule
    params: list[Any]  # tvm runtime tensors, in ``main``'s order after the input
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of an eval-mode model at the example's exact (static) shape."""
    model = model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.13's own pytree deprecation (``isinstance(treespec, LeafSpec)``), raised inside export
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            return torch.export.export(model, (example,))
    except Exception as e:  # torch raises many export error types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AgdError(f"torch.export failed for {type(model).__name__} at input {tuple(example.shape)}: {first}") from None


def _layer_of(node: torch.fx.Node, layer_names: dict[str, str] | None) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "(top level)"
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    path = path.removeprefix("L['self'].").removeprefix("L['self']")
    label = path or "(top level)"
    if layer_names:
        for prefix in sorted(layer_names, key=len, reverse=True):
            if path == prefix or path.startswith(prefix + "."):
                label = f"{layer_names[prefix]} ({path})"
                break
    return f"{label}, a {cls_name.rsplit('.', 1)[-1]}"


def unsupported_ops(ep: torch.export.ExportedProgram, layer_names: dict[str, str] | None = None) -> list[str]:
    """``"aten op in layer L"`` for every call the TVM PyTorch frontend has no converter for."""
    known = ExportedProgramImporter().create_convert_map()
    found: dict[str, str] = {}
    for node in ep.graph_module.graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            if name not in known and name not in found:
                found[name] = f"{name} in layer {_layer_of(node, layer_names)}"
    return list(found.values())


def to_relax(model: nn.Module, example: torch.Tensor, layer_names: dict[str, str] | None = None,
             rewrite: Callable[[nn.Module], nn.Module] = for_tvm) -> RelaxProgram:
    """Export ``rewrite(model)`` at the example's shape and convert it to Relax with its parameters detached
    (the reference output shape is the original model's).

    ``layer_names`` maps module paths (``layers.3``) to names used in error messages (``layer1``);
    ``rewrite``: the graph rewrites applied before export (:func:`agd.tuning.int8.for_int8` for int8)."""
    ep = export_program(rewrite(model), example)
    bad = unsupported_ops(ep, layer_names)
    if bad:
        raise AgdError(f"TVM cannot convert operator {'; '.join(bad)} (see TOOLCHAIN.md: export coverage)")
    with torch.no_grad():
        out = model(example)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)  # as in export
            mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AgdError(f"TVM's PyTorch frontend failed on {type(model).__name__}: {first}") from None
    mod, params = relax.frontend.detach_params(mod)
    return RelaxProgram(mod, list(params.get("main", [])), tuple(example.shape), tuple(out.shape))


def genotype_layer_names(genotype) -> dict[str, str]:
    """Module path → genotype layer name for a derived generator (its layers are ``layers.<i>``)."""
    return {f"layers.{i}": c.name for i, c in enumerate(genotype.layers)}
