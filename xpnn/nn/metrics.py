"""What "accuracy" means for each loss, in one place for the model, the trainer and the CLI.

A softmax head is right when its largest output is the label; a sigmoid head (binary cross-entropy on
logits) when every output's sign agrees with its 0/1 target; a regression (mean squared error) has no
accuracy at all, and asking for one is an error rather than a number.
"""

from __future__ import annotations

from typing import Any

from ..core.backend import namespace_of
from .layers.activations import sigmoid
from .losses import BCEWithLogits, Loss, SoftmaxCrossEntropy, softmax

__all__ = ["count_correct", "has_accuracy", "probabilities", "task_of"]


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
        if y.ndim != 2 or y.shape[1] < 2:
            raise ValueError(f"accuracy: a softmax head needs logits (N, C) with C >= 2, got {tuple(y.shape)}; "
                             "for one yes/no output train with BCEWithLogits")
        if t.ndim == 1 and t.shape[0] == y.shape[0]:
            labels = t
        elif tuple(t.shape) == tuple(y.shape):
            labels = xp.argmax(t, axis=1)
        else:
            raise ValueError(f"accuracy: logits have shape {tuple(y.shape)}; targets must be labels "
                             f"({y.shape[0]},) or one-hot rows {tuple(y.shape)}, got {tuple(t.shape)}")
        return xp.count_nonzero(xp.argmax(y, axis=1) == labels)
    if tuple(y.shape) != tuple(t.shape):
        raise ValueError(f"binary accuracy: logits have shape {tuple(y.shape)}, targets {tuple(t.shape)}")
    right = (y > 0) == (t > 0.5)
    if right.ndim > 1:
        right = xp.all(xp.reshape(right, (right.shape[0], -1)), axis=1)
    return xp.count_nonzero(right)


def probabilities(loss_fn: Loss, y: Any) -> Any:
    """What the outputs ``y`` mean as probabilities under ``loss_fn``.

    Parameters
    ----------
    loss_fn : Loss
        A softmax head (:class:`~xpnn.losses.SoftmaxCrossEntropy`) or a sigmoid head
        (:class:`~xpnn.losses.BCEWithLogits`).
    y : array, (N, C) logits

    Returns
    -------
    array, (N, C)
        Softmax rows (summing to 1) for multiclass, element-wise sigmoids (each the probability of a 1)
        for binary.

    Raises
    ------
    ValueError
        For a regression, whose outputs are not probabilities.
    """
    task = task_of(loss_fn)
    xp = namespace_of(y)
    if task == "multiclass":
        return softmax(xp, y)
    if task == "binary":
        return sigmoid(xp, y)
    raise ValueError(f"probabilities are not defined for a regression ({loss_fn!r}); use predict() for the values")
