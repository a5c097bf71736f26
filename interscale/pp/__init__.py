"""interscale.pp."""
