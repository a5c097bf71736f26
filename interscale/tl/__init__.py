"""interscale.tl."""
