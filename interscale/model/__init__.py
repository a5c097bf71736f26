"""interscale.model."""
