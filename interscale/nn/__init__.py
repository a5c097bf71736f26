"""interscale.nn."""
