"""Configuration schema (placeholder until the config module lands)."""
