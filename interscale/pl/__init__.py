"""Plots (matplotlib). Every function returns its Axes (Figure for multi-panel plots),
accepts ``save=`` (written atomically) and only calls ``plt.show()`` when ``show=True``;
none changes matplotlib's global settings."""

from interscale.pl._baselines import baselines
from interscale.pl._enrichment import enrichment_bars, enrichment_diverging
from interscale.pl._latent import dim_importance_elbow, gene_by_dim_heatmap, latent_correlation
from interscale.pl._ranks import gene_ranks

__all__ = [
    "baselines",
    "dim_importance_elbow",
    "enrichment_bars",
    "enrichment_diverging",
    "gene_by_dim_heatmap",
    "gene_ranks",
    "latent_correlation",
]
