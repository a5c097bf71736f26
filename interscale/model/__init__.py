"""User-facing model classes (a thin layer over the torch module)."""

from interscale.model._models import CombinedModel, GlobalModel, LocalModel

__all__ = ["CombinedModel", "GlobalModel", "LocalModel"]
