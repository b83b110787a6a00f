"""Conv2d, pooling, Flatten, BatchNorm2d and the CNN builder: gradient checks, torch references, bad input."""

from __future__ import annotations

from pathlib import Path

import array_api_compat
import numpy as np
import pytest

import xpnn
from xpnn.model.gradcheck import gradcheck
from xpnn.nn.layers import AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, MaxPool2d

TOLERANCE = 1e-6
EXACT = 1e-10
FASHION = Path("/usr/share/datasets/fashion-mnist")

# (in, out, kernel, stride, padding, input H, W): stride 1 and 2, padding 0 and 1, non-square kernels and
# inputs, sizes the stride does not divide.
CONVS = {
    "3x3-s1-p1": (2, 3, 3, 1, 1, 5, 6),
    "3x2-s2-p0": (3, 2, (3, 2), 2, 0, 7, 6),
    "2x3-s(2,1)-p(1,0)": (2, 2, (2, 3), (2, 1), (1, 0), 5, 4),
    "1x1": (4, 3, 1, 1, 0, 3, 2),
    "kernel-fills-input": (1, 2, (4, 3), 1, 0, 4, 3),
    "5x5-s1-p2": (2, 2, 5, 1, 2, 6, 5),  # the centre offset covers dx: it starts dx instead of zeros
    "1x1-s2-p1": (2, 3, 1, 2, 1, 5, 4),  # padding > kernel - 1: some offsets read only padding
    "2x2-s3-p1": (2, 2, 2, 3, 1, 7, 8),  # stride > kernel: inputs no window reads get zero gradient
    # One input channel unfolds as one row per kernel offset, with the bias as a row of ones (Conv2d._planar).
    "1ch-3x3-s2-p1": (1, 3, 3, 2, 1, 7, 6),
    "1ch-2x3-s1-p(1,0)": (1, 2, (2, 3), 1, (1, 0), 5, 4),
}
# (kernel, stride, input H, W): stride defaulting to the kernel, overlapping windows, odd sizes with dropped edges.
POOLS = {
    "2": (2, None, 4, 6),
    "2-odd": (2, None, 5, 7),
    "3-s2-overlap": (3, 2, 7, 6),
    "(2,3)-s(1,2)": ((2, 3), (1, 2), 5, 7),
    "3-s1": (3, 1, 4, 5),
    "2-s3-gaps": (2, 3, 6, 6),  # stride > kernel: inputs between windows get zero gradient, not garbage
}


def distinct(rng, shape):
    """Values at least 0.01 apart in random order, so no max-pool window is near a tie (eps is 1e-6)."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 0.5


def make_conv(name, **kwargs):
    c_in, c_out, kernel, stride, padding, h, w = CONVS[name]
    return Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, **kwargs), (2, c_in, h, w)


# ---------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("name", CONVS)
def test_conv2d_backward_matches_numerical(backend64, rng, name):
    conv, shape = make_conv(name)
    conv.build(backend64, rng=3)
    errors = gradcheck(conv, backend64.asarray(rng.standard_normal(shape)))
    assert set(errors) == {"W", "b", "input"}
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("name", ["3x3-s1-p1", "1ch-3x3-s2-p1"])
def test_conv2d_backward_after_an_evaluation_forward(backend64, rng, name):
    """Evaluation keeps only the padded input, not the patches; a backward after it unfolds them again."""
    conv, shape = make_conv(name)
    conv.build(backend64, rng=3)
    conv.forward(backend64.asarray(rng.standard_normal((4, *shape[1:]))), train=False)
    assert conv.cols is None and conv.padded is not None
    errors = gradcheck(conv, backend64.asarray(rng.standard_normal(shape)), train=False)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("name", ["3x3-s1-p1", "2x2-s3-p1", "5x5-s1-p2"])
def test_conv2d_over_images_a_few_at_a_time_equals_all_at_once(backend64, rng, name, monkeypatch):
    """On the CPU the patches are unfolded a few images at a time (conv.CHUNK_BYTES): the output and all
    gradients equal one pass over the batch up to rounding (BLAS may round a product of other shape, and dW
    sums the chunks in another order), and the gradients still pass the numerical check."""
    c_in, c_out, kernel, stride, padding, h, w = CONVS[name]
    x = backend64.asarray(rng.standard_normal((5, c_in, h, w)))
    dy_shape = None
    results = {}
    for chunk_bytes in (1 << 30, 1):  # one chunk; one image per chunk
        monkeypatch.setattr(xpnn.layers.conv, "CHUNK_BYTES", chunk_bytes)
        conv = Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
        conv.build(backend64, rng=3)
        y = conv.forward(x, train=True)
        chunks = len(conv._chunks(5))
        dy_shape = dy_shape or tuple(y.shape)
        dy = backend64.asarray(np.random.default_rng(1).standard_normal(dy_shape))
        dx = conv.backward(dy)
        results[chunk_bytes] = [backend64.to_numpy(a) for a in (y, dx, conv.grads["W"], conv.grads["b"])]
        if chunk_bytes == 1:
            launch_bound = backend64.launch_bound
            assert chunks == (1 if launch_bound else 5)
            errors = gradcheck(conv, backend64.asarray(rng.standard_normal((3, c_in, h, w))))
            assert max(errors.values()) < TOLERANCE, errors
    whole, parts = results[1 << 30], results[1]
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts[1], whole[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts[2], whole[2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts[3], whole[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["3x2-s2-p0", "1ch-3x3-s2-p1"])
def test_conv2d_without_bias_backward_matches_numerical(backend64, rng, name):
    conv, shape = make_conv(name, bias=False)
    conv.build(backend64, rng=3)
    errors = gradcheck(conv, backend64.asarray(rng.standard_normal(shape)))
    assert set(errors) == {"W", "input"}
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("pool", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("name", POOLS)
def test_pooling_backward_matches_numerical(backend64, rng, pool, name):
    kernel, stride, h, w = POOLS[name]
    layer = pool(kernel, stride).build(backend64)
    errors = gradcheck(layer, backend64.asarray(distinct(rng, (2, 3, h, w))))
    assert max(errors.values()) < TOLERANCE, errors


def test_flatten_backward_matches_numerical(backend64, rng):
    errors = gradcheck(Flatten().build(backend64), backend64.asarray(rng.standard_normal((2, 3, 2, 4))))
    assert errors["input"] < TOLERANCE, errors


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm2d_backward_matches_numerical(backend64, rng, train):
    layer = BatchNorm2d(3).build(backend64)
    layer.forward(backend64.asarray(rng.standard_normal((4, 3, 2, 3)) + 1), train=True)  # running statistics
    layer.params["gamma"] = backend64.asarray(rng.uniform(0.5, 1.5, 3))
    errors = gradcheck(layer, backend64.asarray(rng.standard_normal((2, 3, 3, 2))), train=train)
    assert set(errors) == {"gamma", "beta", "input"}
    assert max(errors.values()) < TOLERANCE, errors


def test_whole_cnn_backward_matches_numerical(backend64, rng):
    """Two conv blocks with BatchNorm2d and max-pooling, odd image sizes, dropout: every gradient."""
    model = xpnn.cnn([2, 3, 4], [5, 3], image_size=(7, 6), activation="tanh", dropout=0.3, batchnorm=True,
                     backend=backend64, seed=1)
    x = backend64.asarray(rng.standard_normal((3, 2, 7, 6)))
    t = backend64.asarray(rng.integers(0, 3, 3))
    errors = gradcheck(model, x, t, before=lambda: model.reseed(2))
    assert set(errors) == {*model.named_parameters(), "input"}
    assert max(errors.values()) < TOLERANCE, errors


def test_gradcheck_catches_a_wrong_conv_backward(rng):
    class FlippedConv(Conv2d):
        def backward(self, dy):
            return self.xp.flip(super().backward(dy), axis=3)  # input gradient mirrored left to right

    backend = xpnn.get_backend("cpu", "float64")
    conv = FlippedConv(1, 2, 3, padding=1).build(backend, rng=0)
    assert gradcheck(conv, backend.asarray(rng.standard_normal((1, 1, 4, 5))))["input"] > 0.1


# ---------------------------------------------------------------------- torch references
def torch_functional():
    return pytest.importorskip("torch"), pytest.importorskip("torch.nn.functional")


def as_torch(backend, a, grad=True):
    torch, _ = torch_functional()
    return torch.tensor(backend.to_numpy(a), dtype=torch.float64, requires_grad=grad)


def assert_exact(backend, ours, reference):
    assert array_api_compat.device(ours) == backend.device
    np.testing.assert_allclose(backend.to_numpy(ours), reference.detach().numpy(), rtol=0, atol=EXACT)


@pytest.mark.parametrize("name", CONVS)
def test_conv2d_equals_torch_forward_and_gradients(backend64, rng, name):
    _, F = torch_functional()
    conv, shape = make_conv(name)
    conv.build(backend64, rng=5)
    conv.params["b"] = backend64.asarray(rng.standard_normal(conv.out_channels))
    x = backend64.asarray(rng.standard_normal(shape))
    y = conv.forward(x, train=True)
    xt, Wt, bt = (as_torch(backend64, a) for a in (x, conv.params["W"], conv.params["b"]))
    yt = F.conv2d(xt, Wt, bt, stride=conv.stride, padding=conv.padding)
    assert_exact(backend64, y, yt)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(as_torch(backend64, backend64.asarray(dy), grad=False))
    dx = conv.backward(backend64.asarray(dy))
    assert_exact(backend64, dx, xt.grad)
    assert_exact(backend64, conv.grads["W"], Wt.grad)
    assert_exact(backend64, conv.grads["b"], bt.grad)


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("name", POOLS)
def test_pooling_equals_torch_forward_and_gradient(backend64, rng, pool, name):
    _, F = torch_functional()
    kernel, stride, h, w = POOLS[name]
    layer = (MaxPool2d if pool == "max" else AvgPool2d)(kernel, stride).build(backend64)
    reference = F.max_pool2d if pool == "max" else F.avg_pool2d
    x = backend64.asarray(distinct(rng, (2, 3, h, w)))
    xt = as_torch(backend64, x)
    yt = reference(xt, kernel, stride)
    assert_exact(backend64, layer.forward(x, train=True), yt)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(as_torch(backend64, backend64.asarray(dy), grad=False))
    assert_exact(backend64, layer.backward(backend64.asarray(dy)), xt.grad)


def test_maxpool_gives_a_tied_window_gradient_to_its_first_maximum_as_torch_does(backend64):
    _, F = torch_functional()
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, 2:] = 3.0  # one window of four equal maxima, three windows of zeros
    layer = MaxPool2d(2).build(backend64)
    layer.forward(backend64.asarray(x))
    dx = backend64.to_numpy(layer.backward(backend64.asarray(np.ones((1, 1, 2, 2)))))
    xt = as_torch(backend64, backend64.asarray(x))
    F.max_pool2d(xt, 2).sum().backward()
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    assert dx.sum() == 4 and dx[0, 0, 2, 2] == 1


@pytest.mark.parametrize("kernel, stride, size", [(2, None, (6, 8)), (2, None, (5, 7)), ((3, 2), (3, 2), (7, 6)),
                                                  (2, 3, (6, 6)), (1, None, (3, 4))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_fast_backward_gives_the_generic_loops_values(monkeypatch, kernel, stride, size, dtype):
    """NumPy's backward for windows that do not overlap (Backend.first_max_scatter) against the generic loop,
    on windows full of ties (first maximum wins), NaN (the last block takes the gradient), infinite and signed
    zero inputs, signed zeros in dy and dropped edges: the same values, where the loop's +0.0 may be -0.0."""
    backend = xpnn.get_backend("cpu", dtype=np.dtype(dtype).name)
    rng = np.random.default_rng(3)
    x = rng.choice(np.array([0.0, -0.0, 1.0, 1.0, -2.0, np.inf, -np.inf, np.nan, 0.5]), size=(3, 4, *size))
    x[0] = 1.0  # a whole image of ties
    calls = []
    fast = type(backend).first_max_scatter
    monkeypatch.setattr(type(backend), "first_max_scatter",
                        lambda self, *a: calls.append(fast(self, *a)) or calls[-1])
    dy = rng.standard_normal((3, 4, *MaxPool2d(kernel, stride).output_shape((4, *size))[1:])).astype(dtype)
    dy.flat[::5] = -0.0
    results = []
    for use_fast in (True, False):
        if not use_fast:
            monkeypatch.setattr(type(backend), "first_max_scatter", lambda self, *a: None)
        layer = MaxPool2d(kernel, stride).build(backend)
        layer.forward(backend.asarray(x.astype(dtype)), train=True)
        results.append(np.asarray(layer.backward(dy)))
    fast_dx, generic_dx = results
    assert fast_dx.dtype == dtype and fast_dx.shape == x.shape
    np.testing.assert_array_equal(fast_dx, generic_dx)
    assert not (np.signbit(generic_dx) & ~np.signbit(fast_dx)).any()  # only +0.0 may turn into -0.0
    if kernel == 1:  # one block per window: the generic loop
        assert calls == [None]
    else:
        assert calls and all(result is not None for result in calls)


@pytest.mark.parametrize("kernel, stride, size", [(2, None, (6, 8)), (2, None, (7, 5)), ((3, 2), None, (7, 9)),
                                                  (3, 2, (7, 7)), (2, 3, (8, 7)), ((1, 3), None, (4, 6))])
def test_maxpool_gradient_goes_to_each_windows_first_maximum_in_row_major_order(backend64, kernel, stride, size):
    """Against a plain loop over windows, on values drawn from three, so that most windows hold ties: tiling
    windows, overlapping ones, gaps and dropped edges alike."""
    rng = np.random.default_rng(5)
    x = rng.choice(np.array([-1.0, 0.0, 2.0]), size=(2, 3, *size))
    layer = MaxPool2d(kernel, stride).build(backend64)
    y = backend64.to_numpy(layer.forward(backend64.asarray(x)))
    dy = rng.standard_normal(y.shape)
    dx = backend64.to_numpy(layer.backward(backend64.asarray(dy)))
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    expected_y, expected_dx = np.empty(y.shape), np.zeros(x.shape)
    for p in range(y.shape[2]):
        for q in range(y.shape[3]):
            patch = x[:, :, p * sh : p * sh + kh, q * sw : q * sw + kw].reshape(2, 3, kh * kw)
            expected_y[:, :, p, q] = patch.max(axis=2)
            first = patch.argmax(axis=2)  # the first maximum in row-major order
            for n in range(2):
                for c in range(3):
                    i, j = divmod(int(first[n, c]), kw)
                    expected_dx[n, c, p * sh + i, q * sw + j] += dy[n, c, p, q]
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(dx, expected_dx)


def test_first_max_scatter_declines_other_libraries():
    """Elsewhere MaxPool2d keeps its array-API loop; the fast path writes into NumPy arrays only."""
    pytest.importorskip("array_api_strict")
    strict = xpnn.get_backend("array_api_strict")
    x = strict.asarray(np.ones((1, 2, 2, 1)))
    windows = [((slice(None), slice(0, 1), slice(0, 1), slice(None)), x[:, 0:1, 0:1, :])]
    assert strict.first_max_scatter(strict.zeros((1, 2, 2, 1)), windows * 2, x[:, 0:1, 0:1, :],
                                    x[:, 0:1, 0:1, :]) is None


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm2d_equals_torch_batch_norm(backend64, rng, train):
    torch, F = torch_functional()
    layer = BatchNorm2d(3, momentum=0.3).build(backend64)
    layer.params["gamma"] = backend64.asarray(rng.uniform(0.5, 1.5, 3))
    layer.params["beta"] = backend64.asarray(rng.standard_normal(3))
    running_mean, running_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    warm = rng.standard_normal((4, 3, 3, 2)) * 2 + 1
    layer.forward(backend64.asarray(warm), train=True)
    F.batch_norm(torch.tensor(warm), running_mean, running_var, training=True, momentum=0.3)

    x = backend64.asarray(rng.standard_normal((2, 3, 4, 5)) * 3 - 1)
    xt, gt, bt = (as_torch(backend64, a) for a in (x, layer.params["gamma"], layer.params["beta"]))
    yt = F.batch_norm(xt, running_mean, running_var, gt, bt, training=train, momentum=0.3, eps=1e-5)
    assert_exact(backend64, layer.forward(x, train=train), yt)
    assert_exact(backend64, layer.buffers["running_mean"], running_mean)
    assert_exact(backend64, layer.buffers["running_var"], running_var)
    dy = rng.standard_normal((2, 3, 4, 5))
    yt.backward(torch.tensor(dy))
    assert_exact(backend64, layer.backward(backend64.asarray(dy)), xt.grad)
    assert_exact(backend64, layer.grads["gamma"], gt.grad)
    assert_exact(backend64, layer.grads["beta"], bt.grad)


def test_cnn_equals_the_same_network_in_torch(rng):
    """The default architecture, weights copied into torch.nn: logits and every gradient agree."""
    torch, F = torch_functional()
    backend = xpnn.get_backend("cpu", "float64")
    model = xpnn.cnn(dropout=0.0, backend=backend, seed=0)
    x = rng.random((3, 1, 28, 28))
    t = np.array([1, 7, 3])
    loss = model.loss(backend.asarray(x), backend.asarray(t))
    model.backward()
    p = {name: torch.tensor(value, requires_grad=True) for name, value in model.named_parameters().items()}
    h = F.max_pool2d(F.relu(F.conv2d(torch.tensor(x), p["0.W"], p["0.b"], padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p["3.W"], p["3.b"], padding=1)), 2)
    h = F.relu(torch.flatten(h, 1) @ p["7.W"] + p["7.b"]) @ p["9.W"] + p["9.b"]
    loss_t = F.cross_entropy(h, torch.tensor(t))
    loss_t.backward()
    assert abs(float(loss) - loss_t.item()) < EXACT
    for name, grad in model.named_gradients().items():
        np.testing.assert_allclose(grad, p[name].grad.numpy(), rtol=0, atol=EXACT, err_msg=name)


# ---------------------------------------------------------------------- shapes and bad input
def test_layers_run_on_every_backend_and_keep_dtype_and_device(backend, rng):
    model = xpnn.cnn([3, 4, 2], [6, 5], image_size=(9, 8), batchnorm=True, backend=backend, seed=0)
    x = backend.asarray(rng.standard_normal((2, 3, 9, 8)))
    y = model.predict(x, train=True)
    assert tuple(y.shape) == (2, 5)
    assert y.dtype == backend.dtype and array_api_compat.device(y) == backend.device
    model.loss(x, backend.asarray(np.array([0, 4])))
    dx = model.backward(input_grad=True)
    assert tuple(dx.shape) == (2, 3, 9, 8) and dx.dtype == backend.dtype
    assert array_api_compat.device(dx) == backend.device


LAYERS = {
    "Conv2d": (lambda: Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1), (3, 7, 6), (4, 4, 7)),
    "MaxPool2d": (lambda: MaxPool2d(3, 2), (3, 7, 6), (3, 3, 2)),
    "AvgPool2d": (lambda: AvgPool2d((1, 2)), (3, 7, 5), (3, 7, 2)),
    "Flatten": (Flatten, (3, 7, 6), (126,)),
    "BatchNorm2d": (lambda: BatchNorm2d(3), (3, 7, 6), (3, 7, 6)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_output_shape_and_param_shapes_match_what_forward_and_build_make(backend, rng, name):
    make, sample, expected = LAYERS[name]
    layer = make()
    assert layer.output_shape(sample) == expected  # computed before any array exists
    declared = layer.param_shapes()
    layer.build(backend)
    assert declared == {k: tuple(v.shape) for k, v in {**layer.params, **layer.buffers}.items()}
    dy_host = rng.standard_normal((2, *expected))
    y = layer.forward(backend.asarray(rng.standard_normal((2, *sample))), train=True)
    assert tuple(y.shape) == (2, *expected)
    dy = backend.asarray(dy_host)
    assert tuple(layer.backward(dy).shape) == (2, *sample)
    np.testing.assert_array_equal(backend.to_numpy(dy), dy_host.astype(np.float32))  # dy left untouched


def test_conv2d_parameters_have_torch_shapes_and_he_scale():
    conv = Conv2d(8, 16, (3, 5)).build("cpu", rng=0)
    assert conv.params["W"].shape == (16, 8, 3, 5) and conv.params["b"].shape == (16,)
    assert conv.param_shapes() == {"W": (16, 8, 3, 5), "b": (16,)}
    assert Conv2d(8, 16, 3, bias=False).param_shapes() == {"W": (16, 8, 3, 3)}
    assert abs(float(np.std(conv.params["W"])) - np.sqrt(2 / (8 * 3 * 5))) < 0.02  # He: var 2 / fan-in


BAD_INPUT = [
    (lambda: Conv2d(3, 4, 3), (2, 3, 8),
     r"Conv2d\(in_channels=3.*expected input of shape \(N, 3, H, W\), got \(2, 3, 8\)"),
    (lambda: Conv2d(3, 4, 3), (2, 1, 8, 8), r"expected input of shape \(N, 3, H, W\), got \(2, 1, 8, 8\)"),
    (lambda: Conv2d(1, 4, (5, 3), padding=1), (2, 1, 2, 8),
     r"Conv2d.*kernel \(5, 3\) is larger than the padded input \(2\+2, 8\+2\) of input shape \(2, 1, 2, 8\)"),
    (lambda: MaxPool2d(3), (2, 1, 2, 8),
     r"MaxPool2d\(kernel_size=\[3, 3\]\).*kernel \(3, 3\) is larger than the input"),
    (lambda: AvgPool2d(2), (4, 8), r"AvgPool2d.*expected input of shape \(N, C, H, W\), got \(4, 8\)"),
    (lambda: BatchNorm2d(3), (2, 4, 5, 5), r"BatchNorm2d\(num_features=3.*expected input of shape \(N, 3, H, W\), "
                                           r"got \(2, 4, 5, 5\)"),
    (Flatten, (5,), r"Flatten\(\): expected input of shape \(N, \.\.\.\) with at least 2 axes, got \(5,\)"),
]


@pytest.mark.parametrize(("make", "shape", "message"), BAD_INPUT)
def test_wrong_input_shape_names_layer_expected_and_actual(backend, make, shape, message):
    layer = make().build(backend)
    with pytest.raises(ValueError, match=message):
        layer.forward(backend.zeros(shape))
    if len(shape) > 1:  # output_shape raises the same error for the per-sample shape
        with pytest.raises(ValueError, match=type(layer).__name__):
            layer.output_shape(shape[1:])


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Conv2d(0, 4, 3), "Conv2d: in_channels must be a positive integer, got 0"),
    (lambda: Conv2d(3, -1, 3), "Conv2d: out_channels must be a positive integer, got -1"),
    (lambda: Conv2d(3, 4, 0), r"Conv2d: kernel_size must be positive, got 0"),
    (lambda: Conv2d(3, 4, (3, 0)), r"Conv2d: kernel_size must be positive, got \(3, 0\)"),
    (lambda: Conv2d(3, 4, 3, stride=0), "Conv2d: stride must be positive, got 0"),
    (lambda: Conv2d(3, 4, 3, padding=-1), "Conv2d: padding must be >= 0, got -1"),
    (lambda: Conv2d(3, 4, 2.5), r"Conv2d: kernel_size must be an int or a pair of ints \(h, w\), got 2.5"),
    (lambda: Conv2d(3, 4, (1, 2, 3)), r"kernel_size must be an int or a pair of ints"),
    (lambda: MaxPool2d(0), "MaxPool2d: kernel_size must be positive, got 0"),
    (lambda: AvgPool2d(2, stride=-2), "AvgPool2d: stride must be positive, got -2"),
    (lambda: BatchNorm2d(0), "BatchNorm2d: num_features must be a positive integer, got 0"),
])
def test_bad_constructor_arguments_name_the_layer_and_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conv2d_rejects_integer_input(backend):
    with pytest.raises(TypeError, match="Conv2d.*expected .*float32.* input, got .*int64"):
        Conv2d(1, 1, 1).build(backend).forward(backend.asarray(np.ones((1, 1, 2, 2), dtype=np.int64)))


# ---------------------------------------------------------------------- dropout, builder, save and load
def test_dropout_on_images_masks_elementwise_and_backward_uses_the_same_mask(backend):
    layer = Dropout(0.5).build(backend)
    y = backend.to_numpy(layer.forward(backend.asarray(np.ones((8, 4, 10, 10))), train=True))
    assert y.shape == (8, 4, 10, 10)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2.0)
    assert 0.4 < kept.mean() < 0.6
    assert kept.any(axis=(2, 3)).all() and not kept.all(axis=(2, 3)).any()  # per element, not whole channels
    dx = backend.to_numpy(layer.backward(backend.asarray(np.full((8, 4, 10, 10), 3.0))))
    np.testing.assert_array_equal(dx != 0, kept)


def test_cnn_builder_makes_the_issue_architecture():
    model = xpnn.cnn(backend="cpu")
    kinds = [type(layer).__name__ for layer in model.layers]
    # ReLU after the pooling: the issue's conv-ReLU-pool blocks, computed on a quarter of the elements
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Flatten", "Affine", "ReLU",
                     "Dropout", "Affine"]
    others = [type(layer).__name__ for layer in xpnn.cnn(activation="tanh", backend="cpu").layers]
    assert others[:3] == ["Conv2d", "Tanh", "MaxPool2d"]
    conv1, conv2, dense1, dense2 = (model.layers[i] for i in (0, 3, 7, 10))
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.padding) == (1, 32, (3, 3), (1, 1))
    assert (conv2.in_channels, conv2.out_channels) == (32, 64)
    assert (dense1.n_in, dense1.n_out, dense2.n_in, dense2.n_out) == (64 * 7 * 7, 128, 128, 10)
    # torch.nn's count for the same layers: 32·9+32, 64·32·9+64, 3136·128+128, 128·10+10
    assert model.n_parameters == (32 * 9 + 32) + (64 * 32 * 9 + 64) + (3136 * 128 + 128) + (128 * 10 + 10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pooling_before_relu_trains_bit_for_bit_like_relu_before_pooling(rng, dtype):
    """cnn() pools before its ReLU; the issue's order (ReLU, then pool) must give the same steps exactly,
    ties included: blank image regions make whole windows equal (all the bias), many of them negative."""
    backend = xpnn.get_backend("cpu", dtype)
    swapped = xpnn.cnn([2, 4, 3], [5, 3], image_size=(12, 10), dropout=0.0, backend=backend, seed=3)
    layers = [type(layer)(**layer.config()) for layer in swapped.layers]
    for block in (1, 4):  # [Conv, MaxPool, ReLU] -> [Conv, ReLU, MaxPool]
        layers[block], layers[block + 1] = layers[block + 1], layers[block]
    issue_order = xpnn.Sequential(layers, backend=backend, input_shape=(2, 12, 10))
    issue_order.load_state_dict(swapped.state_dict())
    assert type(issue_order.layers[1]).__name__ == "ReLU"
    x = rng.normal(size=(16, 2, 12, 10)) * (rng.random((16, 1, 12, 10)) < 0.5)  # half the pixels blank
    x[:, :, :4] = 0.0  # and whole rows: windows of equal values after the first convolution
    x, y = backend.asarray(x.astype(dtype)), backend.asarray(rng.integers(0, 3, 16))
    optimizers = [xpnn.optim.SGD(m, lr=0.5) for m in (swapped, issue_order)]
    for _ in range(4):
        losses = [m.loss(x, y) for m in (swapped, issue_order)]
        for m, optimizer in zip((swapped, issue_order), optimizers, strict=True):
            m.backward()
            optimizer.step()
        assert backend.item(losses[0]) == backend.item(losses[1])
    for name, value in swapped.named_parameters().items():
        np.testing.assert_array_equal(value, issue_order.named_parameters()[name], err_msg=name, strict=True)


def test_cnn_builder_rejects_images_too_small_for_its_pooling():
    with pytest.raises(ValueError, match=r"MaxPool2d.*larger than the input \(1, 1\)"):
        xpnn.cnn([1, 4, 4, 4], [10], image_size=4)


def test_cnn_saved_on_numpy_loads_on_every_backend_and_predicts_the_same(backend, rng, tmp_path):
    model = xpnn.cnn([1, 3, 4], [6, 4], image_size=(8, 6), batchnorm=True, backend="cpu", seed=7)
    x = rng.random((5, 1, 8, 6)).astype(np.float32)
    model.loss(model.backend.asarray(x), model.backend.asarray(rng.integers(0, 4, 5)))  # moves running stats
    path = model.save(tmp_path / "cnn.npz")
    loaded = xpnn.load(path, backend=backend)
    assert loaded.config() == model.config()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(backend.to_numpy(loaded.state_dict()[name]), value)
    np.testing.assert_allclose(backend.to_numpy(loaded.predict(backend.asarray(x))),
                               model.predict(model.backend.asarray(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_cnn_learns_real_fashion_mnist_subset():
    if xpnn.data.find_files(FASHION) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = xpnn.data.load_dataset("fashion-mnist", FASHION, quiet=True)
    model = xpnn.cnn([1, 16, 32], [64, 10], backend="cpu", seed=0)
    trainer = xpnn.Trainer(model, xpnn.optim.Adam(model, lr=2e-3), batch_size=32, seed=0)
    data = trainer.device_data(ds.x_train[:2000].reshape(-1, 1, 28, 28), ds.y_train[:2000])
    test = trainer.device_data(ds.x_test[:1000].reshape(-1, 1, 28, 28), ds.y_test[:1000])
    before = model.accuracy(test.x, test.labels)
    trainer.run_epoch(data, 0)
    after = model.accuracy(test.x, test.labels, batch_size=500)
    assert before < 0.3 and after > 0.6, (before, after)  # 0.72 measured; chance is 0.1


@pytest.mark.parametrize(("kernel", "stride", "size", "channels"),
                         [((3, 3), (1, 1), (6, 5), 4), ((3, 2), (2, 1), (7, 6), 4), ((2, 3), (2, 3), (5, 9), 4),
                          ((1, 1), (1, 1), (3, 4), 4), ((3, 3), (1, 1), (6, 5), 1)])
def test_strided_unfold_equals_the_generic_reference(backend, rng, kernel, stride, size, channels):
    """Where a library has a strided fast path (NumPy, CuPy) it copies exactly what the generic slices copy."""
    from xpnn.nn.layers.conv import output_size, unfold

    x = backend.asarray(rng.standard_normal((3, *size, channels)))
    out = output_size(size, kernel, stride)
    fast = backend.unfold_fast(x, kernel, stride, out)
    if fast is None:
        assert not backend.name.startswith("cupy") and backend.name != "numpy"
        return
    np.testing.assert_array_equal(backend.to_numpy(fast), backend.to_numpy(unfold(backend.xp, x, kernel, stride, out)))
    assert fast.shape == (3 * out[0] * out[1], kernel[0] * kernel[1] * channels)


def test_strided_unfold_is_numpy_and_cupy_only(backend):
    """Every other library takes the generic path, which the tests above check against torch."""
    fast = backend.unfold_fast(backend.zeros((1, 3, 3, 2)), (2, 2), (1, 1), (2, 2))
    assert (fast is not None) == (backend.name == "numpy" or backend.name.startswith("cupy"))


def test_a_saved_cnn_keeps_its_input_shape(tmp_path):
    model = xpnn.cnn([1, 4], [3], image_size=(8, 6), seed=0)
    loaded = xpnn.load(model.save(tmp_path / "cnn.npz"))
    assert loaded.input_shape == (1, 8, 6) == model.input_shape
    assert loaded.output_shapes()[-1] == (3,)


@pytest.mark.parametrize("shape", [[0, 8, 8], "1x8x8", [1.5, 8, 8], [True, 8, 8], list(range(1, 11))])
def test_a_crafted_input_shape_is_a_format_error(tmp_path, shape):
    model = xpnn.cnn([1, 4], [3], image_size=8, seed=0)
    arrays = {name: np.asarray(value) for name, value in model.state_dict().items()}
    config = {**model.config(), "input_shape": shape}
    path = xpnn.io.serialization.write_npz(tmp_path / "bad.npz", arrays, {"kind": "model", "config": config, "seed": 0})
    with pytest.raises(xpnn.FormatError, match="input_shape"):
        xpnn.load(path)
