"""Small digits models trained and exported by other frameworks, each in its own process
(TensorFlow and PaddlePaddle cannot share one: importing both crashes).

    python tests/exporter_models.py keras|paddle|flax OUT.onnx

Each writes the model exported with its exporter's defaults.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import digits_split  # noqa: E402

EPOCHS = 12


def _batches(n, rng):
    return np.array_split(rng.permutation(n), n // 64)


def keras(out: str) -> None:
    """Conv-ReLU6-Conv-ReLU-MaxPool-Dense, NHWC, through tf2onnx (Dense becomes MatMul + Add)."""
    import tensorflow as tf
    import tf2onnx
    x, y, _, _ = digits_split(0)
    x = x.transpose(0, 2, 3, 1)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.layers.Input((8, 8, 1)), tf.keras.layers.Conv2D(16, 3, padding="same"),
        tf.keras.layers.ReLU(max_value=6.0), tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        tf.keras.layers.MaxPool2D(), tf.keras.layers.Flatten(), tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10)])
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=EPOCHS, batch_size=64, verbose=0)
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
    # tf2onnx's from_keras does not read Keras 3 models; a tf.function of the model is its documented route
    tf2onnx.convert.from_function(tf.function(lambda t: model(t, training=False)), input_signature=spec,
                                  output_path=out)


def paddle(out: str) -> None:
    """Conv-BN-ReLU-Conv-ReLU-MaxPool-Linear through paddle2onnx (BN unfolded, flatten as Shape ops)."""
    import paddle as pd
    x, y, _, _ = digits_split(0)
    pd.seed(0)
    net = pd.nn.Sequential(
        pd.nn.Conv2D(1, 16, 3, padding=1), pd.nn.BatchNorm2D(16), pd.nn.ReLU(),
        pd.nn.Conv2D(16, 32, 3, padding=1), pd.nn.ReLU(), pd.nn.MaxPool2D(2), pd.nn.Flatten(),
        pd.nn.Linear(32 * 16, 10))
    opt = pd.optimizer.Adam(learning_rate=3e-3, parameters=net.parameters())
    rng = np.random.default_rng(0)
    for _ in range(EPOCHS):
        for idx in _batches(len(x), rng):
            loss = pd.nn.functional.cross_entropy(net(pd.to_tensor(x[idx])), pd.to_tensor(y[idx]))
            loss.backward()
            opt.step()
            opt.clear_grad()
    net.eval()
    stem = out[:-5] if out.endswith(".onnx") else out
    pd.onnx.export(net, stem, input_spec=[pd.static.InputSpec([None, 1, 8, 8], "float32", "input")])


def flax(out: str) -> None:
    """Conv-BN-ReLU-Conv-ReLU-MaxPool-Linear in Flax NNX, NHWC, through jax2onnx."""
    import jax2onnx
    import onnx
    import optax
    from flax import nnx
    x, y, _, _ = digits_split(0)
    x = x.transpose(0, 2, 3, 1)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.c1, self.c2 = nnx.Conv(1, 16, (3, 3), rngs=rngs), nnx.Conv(16, 32, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(16, rngs=rngs)
            self.fc = nnx.Linear(32 * 16, 10, rngs=rngs)

        def __call__(self, t):
            t = nnx.relu(self.bn(self.c1(t)))
            t = nnx.max_pool(nnx.relu(self.c2(t)), window_shape=(2, 2), strides=(2, 2))
            return self.fc(t.reshape(t.shape[0], -1))

    net = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(net, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(net, opt, xb, yb):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()  # noqa: E731
        opt.update(net, nnx.grad(loss)(net))

    rng = np.random.default_rng(0)
    for _ in range(EPOCHS):
        for idx in _batches(len(x), rng):
            step(net, opt, x[idx], y[idx])
    net.eval()
    onnx.save(jax2onnx.to_onnx(net, [("B", 8, 8, 1)]), out)


if __name__ == "__main__":
    {"keras": keras, "paddle": paddle, "flax": flax}[sys.argv[1]](sys.argv[2])
