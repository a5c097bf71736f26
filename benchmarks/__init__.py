"""asv benchmarks of InterScale (see benchmarks/README.md)."""
