"""BatchNormalization statistics on short runs: a momentum for the step count, and re-estimation.

Keras' `BatchNormalization` keeps moving averages of the batch mean and variance, updated once
a training step with `momentum` (0.99 by default): after `n` steps the initial values (mean 0,
variance 1) still weigh `momentum ** n`, 60% after 50 steps (a 280-image folder trained for 10
epochs at batch size 64). Inference (`evaluate`, `predict`, and the int8 export, which folds
BN into the convolutions) uses those averages, so a student that reached 48% in training mode
scores chance. There are two remedies here, and a check:

- `momentum_for_steps(steps)` gives a momentum with which the initial values fade below 1%
  within the planned steps (between 0.9 and Keras' 0.99);
- `recompute_statistics(model, data)` keeps the weights fixed and sets every moving mean and
  variance to the average of the batch statistics over some training batches (the
  re-estimation of SWA and of PyTorch's `torch.optim.swa_utils.update_bn`). Do this before
  evaluation and export;
- `stale_fraction(model, steps)` says how much weight the initial statistics still have after
  a run of `steps` steps.

    >>> student = tfkd.students.build("mobile_cnn", bn_momentum=momentum_for_steps(50))
    >>> student.fit(train_ds, epochs=10)
    >>> recompute_statistics(student, x_train[:2048])     # before evaluate / convert
"""
import numpy as np

# Below 0.9 the moving averages follow only the last few batches (about 1 / (1 - momentum)
# of them), so they get noisy. Very short runs should rely on `recompute_statistics` instead.
MIN_MOMENTUM = 0.9
# Keras' default. Long runs keep Keras' behaviour.
MAX_MOMENTUM = 0.99


def momentum_for_steps(steps, leftover=0.01):
    """A BatchNormalization momentum for a run of `steps` training steps.

    It is the momentum `m` with `m ** steps == leftover`, so that the initial statistics weigh
    at most `leftover` at the end of the run, clipped to [0.9, 0.99]. Examples: 50 steps give
    0.912, 460 steps or more give 0.99.
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not 0.0 < leftover < 1.0:
        raise ValueError(f"leftover must be in (0, 1), got {leftover}.")
    return float(np.clip(leftover ** (1.0 / steps), MIN_MOMENTUM, MAX_MOMENTUM))


def batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` inside `model` (nested models included)."""
    import keras

    from tfkd import _compat

    layers = [model] + _compat.sublayers(model)
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def stale_fraction(model, steps):
    """How much the initial statistics still weigh after `steps` training steps.

    This is `momentum ** steps`, the largest over the model's BatchNormalization layers, or 0.0
    when the model has none. Above a few percent, the moving averages are still closer to
    their initial values than to the data. Use a lower momentum (`momentum_for_steps`) or
    `recompute_statistics` before evaluating or exporting the model.
    """
    momenta = [float(layer.momentum) for layer in batch_norm_layers(model)]
    return max((m ** max(0, int(steps)) for m in momenta), default=0.0)


def _batches(data, batch_size):
    """Input batches of `data`: arrays (or a dict of arrays) sliced here, or a dataset / iterable
    of batches whose elements are `x` or `(x, y[, sample_weight])`."""
    import keras
    import tensorflow as tf

    if isinstance(data, (np.ndarray, tf.Tensor, dict)):
        n = len(keras.tree.flatten(data)[0])
        for start in range(0, n, batch_size):
            # Images are often kept as uint8; the models compute in float.
            yield keras.tree.map_structure(
                lambda a: np.asarray(a[start:start + batch_size], "float32"), data)
        return
    for element in data:
        yield element[0] if isinstance(element, tuple) else element


def recompute_statistics(model, data, max_batches=None, batch_size=64):
    """Re-estimates the moving mean and variance of every BatchNormalization layer of `model`.

    The weights stay fixed. The model runs in training mode over the batches of `data`, and
    each layer's moving mean and variance become the plain average of its batch statistics
    over those batches. This replaces the moving averages, whose early values come from
    weights that have since changed (and, on short runs, from the initial mean 0 and variance
    1). Call it after training and before `evaluate`, `predict` or an export that folds BN into
    the convolutions. Use training images without augmentation, prepared as the model sees
    them at inference.

    Layers frozen with `trainable=False` are re-estimated too, and stay frozen. Dropout and
    other training-mode layers are active during the pass, as in training. A model with no
    BatchNormalization layer is not run at all, so a quantization-aware model, whose BN is
    folded, keeps its activation ranges. Re-estimate the float model before quantizing it.

    Args:
        model: a Keras model (or layer) holding BatchNormalization layers, at any depth.
        data: input images as an array, a tensor or a dict of arrays (batched here with
            `batch_size`), or a `tf.data.Dataset` / iterable of batches `x` or
            `(x, y[, sample_weight])`.
        max_batches: use at most this many batches (None: all of `data`).
        batch_size: batch size when `data` is an array. Statistics come from batches of this
            size, as they do in training.

    Returns:
        The number of samples the statistics were computed over (0 when the model has no
        BatchNormalization layer).

    Raises:
        ValueError: `data` holds no batch, or a layer uses batch renormalization (its
            statistics are kept differently; retrain it instead).
    """
    import keras

    layers = batch_norm_layers(model)
    if not layers:
        return 0
    renorm = [layer.name for layer in layers if getattr(layer, "renorm", False)]
    if renorm:
        raise ValueError(
            f"BatchNormalization layers {renorm} use batch renormalization (renorm=True), "
            "whose moving statistics cannot be re-estimated as plain averages. Train the "
            "model longer instead, or rebuild it with renorm=False.")
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    seen = 0
    try:
        for layer in layers:
            # A frozen Keras 3 BatchNormalization runs in inference mode even with
            # training=True, and would keep its old statistics.
            layer.trainable = True
        for k, batch in enumerate(_batches(data, batch_size), start=1):
            if max_batches is not None and k > max_batches:
                break
            # With momentum (k - 1) / k, Keras' own update `m * old + (1 - m) * new` is the
            # running average over the k batches so far (the first batch replaces the old
            # statistics). The model runs eagerly, so the layers read the new value each call.
            for layer in layers:
                layer.momentum = (k - 1) / k
            model(batch, training=True)
            seen += len(keras.tree.flatten(batch)[0])
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum = momentum
            layer.trainable = trainable
    if seen == 0:
        raise ValueError("recompute_statistics got no batch: `data` is empty.")
    return seen
