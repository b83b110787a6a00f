"""Optimizers (SGD, Momentum, Adam) and learning-rate schedules."""

from .base import Optimizer
from .flat import FlatLayout
from .optimizers import OPTIMIZERS, SGD, Adam, Momentum, get_optimizer
from .schedules import get_schedule

__all__ = ["OPTIMIZERS", "SGD", "Adam", "FlatLayout", "Momentum", "Optimizer", "get_optimizer", "get_schedule"]
