"""Tap models: features by name or path, nested models inlined, every weight shared."""
import keras
import numpy as np
import pytest

from tfkd.taps import Tap, find_layer


def backbone(name="backbone", shape=(8, 8, 3)):
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    h = keras.layers.ReLU(name="r1")(h)
    return keras.Model(inputs, h, name=name)


def test_nested_features_match_running_the_parts():
    inner = backbone()
    x = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(inner(x))
    model = keras.Model(x, {"logits": keras.layers.Dense(3, name="head")(pooled),
                            "embedding": pooled})
    tap = Tap(model, ["backbone/r1", "c1", "gap", "backbone"])
    data = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    view = tap(data)
    np.testing.assert_allclose(view.outputs["logits"], model(data)["logits"], atol=1e-6)
    np.testing.assert_allclose(view.features["backbone/r1"], inner(data), atol=1e-6)
    np.testing.assert_allclose(view.features["backbone"], inner(data), atol=1e-6)
    np.testing.assert_allclose(view.features["c1"], inner.get_layer("c1")(data), atol=1e-6)
    # Shared, not copied: the tap owns no weights of its own.
    tap_ids = {id(w) for w in tap._graph.weights}
    assert tap_ids == {id(w) for w in model.weights}


def test_nested_model_behind_a_front_end():
    inner = backbone(name="student")
    x = keras.Input((4, 4, 3))
    up = keras.layers.Resizing(8, 8, name="up")(x)
    model = keras.Model(x, inner(up))
    tap = Tap(model, ["r1"])
    data = np.random.default_rng(1).random((2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(tap(data).features["r1"], model(data), atol=1e-6)


def test_sequential_model_is_tapped():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                              keras.layers.Dense(2, name="d2")])
    data = np.ones((2, 4), "float32")
    view = Tap(model, ["d1"])(data)
    np.testing.assert_allclose(view.features["d1"], model.get_layer("d1")(data), atol=1e-6)
    np.testing.assert_allclose(view.outputs, model(data), atol=1e-6)


def test_find_layer_errors():
    model = backbone()
    with pytest.raises(ValueError, match=r"Close matches: \['r1'\]"):
        find_layer(model, "r2", "teacher")
    assert find_layer(model, "c1").name == "c1"


def test_dict_inputs_through_fit_evaluate_predict():
    import tensorflow as tf

    import tfkd

    def net(width, name):
        image = keras.Input((8, 8, 3), name="image")
        h = keras.layers.Conv2D(width, 3, activation="relu", name="feat")(image)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model({"image": image}, keras.layers.Dense(4)(h), name=name)

    distiller = tfkd.Distiller(net(4, "student"), net(8, "teacher"), knowledge=[
        tfkd.knowledge.SoftTargets(), tfkd.knowledge.Hint("feat", "feat")])
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = {"image": rng.random((32, 8, 8, 3)).astype("float32")}
    y = rng.integers(0, 4, 32)
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["hint_loss"][0])
    logs = distiller.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), verbose=0,
                              return_dict=True)
    assert set(logs) == {"loss", "student_loss", "soft_targets_loss", "hint_loss"}
    np.testing.assert_allclose(distiller.predict(x, verbose=0),
                               distiller.student.predict(x, verbose=0), atol=1e-6)


def test_input_spec_of_a_subclassed_model_built_with_a_shape():
    from tfkd.taps import model_input_spec

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    with pytest.raises(ValueError, match=r"student `net` is not built.*student\(x\[:1\]\)"):
        model_input_spec(net, side="student")
    net.build((None, 5))
    spec = model_input_spec(net)
    assert isinstance(spec, keras.KerasTensor) and tuple(spec.shape) == (None, 5)
    # The spec gives the output shapes before any data is seen.
    assert Tap(net).symbolic_view().outputs.shape == (None, 2)
