"""interscale.train."""
