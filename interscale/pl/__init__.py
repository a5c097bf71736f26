"""interscale.pl."""
