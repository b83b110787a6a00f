"""Layers, losses, initializers and metrics: what a network is made of."""

from . import initializers, layers, losses, metrics

__all__ = ["initializers", "layers", "losses", "metrics"]
