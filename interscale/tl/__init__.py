"""interscale.tl: analysis tools."""

from interscale.evaluation import linear_baselines
from interscale.tl._enrich import empty_enrichment, enrich
from interscale.tl._reproducibility import set_full_reproducibility

__all__ = ["empty_enrichment", "enrich", "linear_baselines", "set_full_reproducibility"]
