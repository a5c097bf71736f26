"""interscale.graphs."""
