"""interscale.datasets."""
