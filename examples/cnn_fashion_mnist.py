"""Train the two-convolution network of ``xpnn.cnn()`` on Fashion-MNIST images, shaped (N, 1, 28, 28).

    python examples/cnn_fashion_mnist.py             # the real data, 3 epochs (about 30 s each on 2 cores)
    python examples/cnn_fashion_mnist.py --workers 1 # one thread (default: one per core, on NumPy)
    python examples/cnn_fashion_mnist.py --tiny      # 64 random images, 1 epoch (a smoke test)
"""

from __future__ import annotations

import argparse

import numpy as np

import xpnn
from xpnn.io.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="random data, one epoch: runs in about a second")
    parser.add_argument("--workers", type=lambda text: text if text == "auto" else int(text), default="auto",
                        help="threads that share each batch, or auto: one per core on NumPy (default: auto)")
    args = parser.parse_args()

    if args.tiny:
        rng = np.random.default_rng(0)
        x_train, y_train = rng.random((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64)
        x_test, y_test = rng.random((32, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 32)
        epochs = 1
    else:
        data = load_dataset("fashion-mnist")
        x_train, y_train = data.x_train.reshape(-1, 1, 28, 28), data.y_train   # NCHW, as PyTorch
        x_test, y_test = data.x_test.reshape(-1, 1, 28, 28), data.y_test
        epochs = 3

    model = xpnn.cnn(seed=0)          # conv 1->32, pool, conv 32->64, pool, 3136->128, dropout 0.5, 128->10
    model.summary(input_shape=(1, 28, 28))
    batch_size = 32 if args.tiny else 128
    history = xpnn.fit(model, xpnn.optim.Adam(model, lr=1e-3), x_train, y_train, epochs=epochs, batch_size=batch_size,
                       schedule="cosine", eval_sets={"test": (x_test, y_test)}, workers=args.workers,
                       verbose=not args.tiny)
    print(f"epoch {len(history)}: test accuracy {history[-1]['test_accuracy']:.2%}")


if __name__ == "__main__":
    main()
