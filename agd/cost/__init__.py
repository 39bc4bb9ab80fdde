"""Cost models: MACs and parameters counted by tracing real execution (:mod:`agd.cost.count`, exported
here), and the latency-table format of measured milliseconds per configuration of a search space
(:mod:`agd.cost.latency`, imported from there: it reads the search space, which the MACs count does not)."""

from agd.cost.count import TRANSPOSED_CONVENTIONS, Cost, count, count_macs, count_params, format_count, format_macs

__all__ = ["TRANSPOSED_CONVENTIONS", "Cost", "count", "count_macs", "count_params", "format_count", "format_macs"]
