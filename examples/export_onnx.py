"""Train an MLP on Fashion-MNIST, export it to ONNX and run the file in onnxruntime, without xpnn.

    pip install onnx onnxruntime                     # or the onnx extra: pip install -e ".[onnx]"
    python examples/export_onnx.py                   # the real data, 3 epochs (a few seconds each)
    python examples/export_onnx.py --keep model.onnx # also keep the exported file
    python examples/export_onnx.py --tiny            # 256 random images, 1 epoch (a smoke test)

The same file from the command line: ``python -m xpnn.export model.npz model.onnx``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

import xpnn
from xpnn.io.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="random data, one epoch: runs in about a second")
    parser.add_argument("--keep", type=Path, metavar="PATH", help="copy the exported .onnx file there")
    args = parser.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("export_onnx.py needs onnx and onnxruntime: pip install onnx onnxruntime") from None

    if args.tiny:
        rng = np.random.default_rng(0)
        x_train, y_train = rng.random((256, 784), dtype=np.float32), rng.integers(0, 10, 256)
        x_test, y_test = rng.random((100, 784), dtype=np.float32), rng.integers(0, 10, 100)
        epochs = 1
    else:
        data = load_dataset("fashion-mnist")
        x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
        epochs = 3

    model = xpnn.mlp([784, 256, 128, 10], dropout=0.1, seed=0)
    xpnn.fit(model, xpnn.optim.Adam(model, lr=1e-3), x_train, y_train, epochs=epochs, verbose=not args.tiny)

    with tempfile.TemporaryDirectory() as folder:
        path = model.to_onnx(Path(folder) / "model.onnx")     # softmax probabilities, any batch size
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        proba = session.run(None, {"input": x_test})[0]        # (N, 10), computed by onnxruntime alone
        if args.keep:
            shutil.copyfile(path, args.keep)

    ours = xpnn.backend.to_numpy(model.predict_proba(x_test))
    accuracy = float(np.mean(proba.argmax(axis=1) == y_test))
    print(f"onnxruntime test accuracy {accuracy:.2%} (xpnn: {model.accuracy(x_test, y_test):.2%}), "
          f"largest probability difference {np.abs(proba - ours).max():.1e}")


if __name__ == "__main__":
    main()
