"""Synthetic latency tables for the budget tests (tests/test_search.py, tests/test_precision.py): the
format of agd.cost.latency filled from the MACs cost model instead of measurements."""

from __future__ import annotations

from agd.cost.latency import LatencyTable, entry_key, space_key


def synthetic_table(space, sizes, **table_args) -> LatencyTable:
    """An x86 latency table of ``space`` at each of ``sizes`` (None: the reference size): every operator
    configuration costs 0.02 ms plus 1 ms per million MACs, and the network an overhead of
    0.25 ms. ``table_args`` go to LatencyTable (precision=, runtime=)."""
    table = LatencyTable("x86", {"kind": "llvm"}, **table_args)
    for hw in sizes:
        for i, (spec, size) in enumerate(zip(space.layers, space.input_sizes(hw))):
            for op in spec.ops:
                if op == "identity":
                    continue
                for ci in space.in_choices(i):
                    for co in spec.widths:
                        table.entries[entry_key(spec, op, ci, co, size)] = 0.02 + space.op_macs(i, op, ci, co, size) / 1e6
        table.overheads[space_key(space, hw)] = {"ms": 0.25}
    return table
