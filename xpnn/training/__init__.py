"""fit(), the Trainer, its callbacks and history, checkpoints."""

from .callbacks import Callback, EarlyStopping, History, LambdaCallback
from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import DivergenceError, Trainer, fit

__all__ = ["Callback", "DivergenceError", "EarlyStopping", "History", "LambdaCallback", "Trainer", "fit",
           "load_checkpoint", "save_checkpoint"]
