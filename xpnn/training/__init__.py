"""fit(), the Trainer, its callbacks and history, checkpoints."""

from .callbacks import Callback, EarlyStopping, History, JsonLinesLogger, LambdaCallback, ModelCheckpoint
from .checkpoint import load_checkpoint, save_checkpoint
from .trainer import DivergenceError, Trainer, fit

__all__ = ["Callback", "DivergenceError", "EarlyStopping", "History", "JsonLinesLogger", "LambdaCallback",
           "ModelCheckpoint", "Trainer", "fit", "load_checkpoint", "save_checkpoint"]
