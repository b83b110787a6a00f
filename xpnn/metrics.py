"""What "accuracy" means for each loss, in one place for the model, the trainer and the CLI.

A softmax head is right when its largest output is the label; a sigmoid head (binary cross-entropy on
logits) when every output's sign agrees with its 0/1 target; a regression (mean squared error) has no
accuracy at all, and asking for one is an error rather than a number.
"""

from __future__ import annotations

from typing import Any

from .backend import namespace_of
from .losses import BCEWithLogits, Loss, SoftmaxCrossEntropy

__all__ = ["count_correct", "has_accuracy", "task_of"]


def task_of(loss_fn: Loss) -> str:
    """``"multiclass"``, ``"binary"`` or ``"regression"``: which metric fits ``loss_fn``.

    A custom loss declares its task with a class attribute ``task``; without one it counts as a regression.
    """
    if isinstance(loss_fn, SoftmaxCrossEntropy):
        return "multiclass"
    if isinstance(loss_fn, BCEWithLogits):
        return "binary"
    return getattr(loss_fn, "task", "regression")


def has_accuracy(loss_fn: Loss) -> bool:
    """Whether an accuracy is defined for models trained with ``loss_fn``."""
    return task_of(loss_fn) != "regression"


def count_correct(loss_fn: Loss, y: Any, t: Any) -> Any:
    """Number of correctly predicted samples as a 0-d integer array on the device, or None for a regression.

    Parameters
    ----------
    loss_fn : Loss
        Decides the rule (see the module docstring).
    y : array, (N, C) logits for multiclass, (N, K) logits for binary
    t : array, (N,) integer labels or (N, C) one-hot rows for multiclass; (N, K) 0/1 targets for binary

    Returns
    -------
    0-d int64 array or None
        A binary sample counts as correct when all its K outputs are right (subset accuracy).
    """
    task = task_of(loss_fn)
    if task == "regression":
        return None
    xp = namespace_of(y)
    if task == "multiclass":
        labels = t if t.ndim == 1 else xp.argmax(t, axis=1)
        return xp.count_nonzero(xp.argmax(y, axis=1) == labels)
    if tuple(y.shape) != tuple(t.shape):
        raise ValueError(f"binary accuracy: logits have shape {tuple(y.shape)}, targets {tuple(t.shape)}")
    right = (y > 0) == (t > 0.5)
    if right.ndim > 1:
        right = xp.all(xp.reshape(right, (right.shape[0], -1)), axis=1)
    return xp.count_nonzero(right)
