"""interscale.evaluation."""
