"""interscale.tl: analysis tools."""

from interscale.evaluation import linear_baselines
from interscale.tl._enrich import enrich
from interscale.tl._reproducibility import set_full_reproducibility

__all__ = ["enrich", "linear_baselines", "set_full_reproducibility"]
