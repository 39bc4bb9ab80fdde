"""Cost model: MACs and parameters counted by tracing real execution (see :mod:`agd.cost.count`)."""

from agd.cost.count import TRANSPOSED_CONVENTIONS, Cost, count, count_macs, count_params, format_count, format_macs

__all__ = ["TRANSPOSED_CONVENTIONS", "Cost", "count", "count_macs", "count_params", "format_count", "format_macs"]
