"""A trained model as an app's client wants it: class probabilities, not logits.

MediaPipe's `ImageClassifier` (and the TFLite Task Library) report a classifier's output as
scores and apply no activation of their own, so a student that returns logits is exported
with its softmax (one label per image) or sigmoid (multi-label) inside the file. For a
quantization-aware model the activation is `tfkd.quantization`'s `QuantizedActivation`,
which carries TFLite's fixed int8 output range (1/256 steps for softmax and sigmoid), so the
file stays fully int8 and the Edge TPU runs the activation too.

    >>> import keras, tfkd.students
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> p = tfkd.students.with_activation(m, "softmax")
    >>> round(float(p.predict(keras.ops.ones((1, 4)), verbose=0).sum()), 5)
    1.0
"""
import keras

ACTIVATIONS = ("softmax", "sigmoid")


def with_activation(model, activation="softmax", name="probabilities"):
    """`model` followed by `activation` ("softmax" or "sigmoid") on its single output, as a
    new functional model (the weights are shared, not copied)."""
    from tfkd.quantization import is_quantized
    from tfkd.quantization import layers as qlayers

    if activation not in ACTIVATIONS:
        raise ValueError(f"with_activation: activation={activation!r}; use one of "
                         f"{ACTIVATIONS}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"with_activation: '{model.name}' must have one input and one "
                         f"output (it has {len(model.inputs)} and {len(model.outputs)}).")
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    logits = model(inputs)
    if is_quantized(model):
        out = qlayers.QuantizedActivation(activation, name=name)(logits)
    else:
        out = keras.layers.Activation(activation, name=name)(logits)
    return keras.Model(inputs, out, name=f"{model.name}_{activation}")
