"""interscale.tl: analysis tools."""

from interscale.tl._enrich import enrich
from interscale.tl._reproducibility import set_full_reproducibility

__all__ = ["enrich", "set_full_reproducibility"]
