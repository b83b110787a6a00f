"""Optimizers (SGD, Momentum, Adam) and learning-rate schedules."""

from .optimizers import OPTIMIZERS, SGD, Adam, FlatLayout, Momentum, Optimizer, get_optimizer, get_schedule  # noqa: F401

__all__ = ["SGD", "Adam", "Momentum", "Optimizer", "get_optimizer", "get_schedule"]
