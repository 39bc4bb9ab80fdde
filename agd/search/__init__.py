"""The search engine: distillation-guided, budget-constrained differentiable architecture search."""

from agd.search.budget import Budget, DualController, derive_within_budget, macs_budget, parse_macs, parse_ms
from agd.search.config import SEARCH_PRESETS, SearchConfig, get_search_config
from agd.search.engine import Search, SearchResult, default_space, write_results

__all__ = [
    "SEARCH_PRESETS", "Budget", "DualController", "Search", "SearchConfig", "SearchResult", "default_space", "derive_within_budget",
    "get_search_config", "macs_budget", "parse_macs", "parse_ms", "write_results",
]
