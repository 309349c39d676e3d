"""Quantized distillation end to end on real MNIST: float KD, `Distiller.quantization_aware`, KD fine-tune
of the quantization-aware student, fully int8 export, and the .tflite checked against Keras.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import keras

import tfkd
import tfkd.tflite as tfl
from tfkd.quantization import is_quantized
from tiny_models import convnet

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


@pytest.fixture(scope="module")
def float_distiller(mnist_small):
    (x, y), _ = mnist_small
    keras.utils.set_random_seed(0)
    teacher = convnet(width=16, name="teacher", seed=1)
    teacher.compile(keras.optimizers.Adam(3e-3), CE)
    teacher.fit(x, y, epochs=2, batch_size=64, verbose=0)
    student = convnet(width=8, name="student", seed=2)
    distiller = tfkd.Distiller(
        student, teacher,
        knowledge=[tfkd.knowledge.SoftTargets(temperature=4.0),
                   tfkd.knowledge.Hint("block2", "block2")],  # 16 -> 32 channels: an adapter
        student_loss_weight=0.5)
    distiller.compile(keras.optimizers.Adam(3e-3), CE)
    distiller.fit(x, y, epochs=1, batch_size=64, verbose=0)
    return distiller


def test_quantized_distillation_round_trip(float_distiller, mnist_small, tmp_path):
    (x, y), (x_test, y_test) = mnist_small
    distiller = float_distiller
    hint = distiller.knowledge[1]
    adapter_before = [w.copy() for w in hint.adapter.get_weights()]

    qat = distiller.quantization_aware(calibration_data=x[:256], optimizer=keras.optimizers.Adam(1e-3))

    # The same teacher and knowledge terms (trained adapter included); a new, QAT student.
    assert qat.teacher is distiller.teacher
    assert all(a is b for a, b in zip(qat.knowledge, distiller.knowledge))
    assert qat.knowledge[1].adapter is hint.adapter
    for w, before in zip(qat.knowledge[1].adapter.get_weights(), adapter_before):
        np.testing.assert_array_equal(w, before)
    assert is_quantized(qat.student) and not is_quantized(distiller.student)
    assert {"block1", "block2", "pool", "logits"} <= {l.name for l in qat.student.layers}

    history = qat.fit(x, y, epochs=3, batch_size=64, verbose=0).history
    for term in ("soft_targets_loss", "hint_loss"):
        assert history[term][-1] < history[term][0], (term, history[term])
    # The adapter kept training inside the QAT distiller, and the float one sees it: shared.
    assert any(not np.array_equal(w, b)
               for w, b in zip(hint.adapter.get_weights(), adapter_before))

    path = str(tmp_path / "student_int8.tflite")
    report = tfl.convert(qat.student, path, quantization="qat", input_type="int8",
                         output_type="int8")
    assert report.is_fully_int8, report
    assert {op.name for op in report.ops} <= {"CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE",
                                              "FULLY_CONNECTED"}, report

    keras_acc = _accuracy(qat.student, x_test, y_test)
    tflite_acc = tfl.evaluate(path, (x_test, y_test))["accuracy"]
    assert keras_acc > 0.75, keras_acc  # it learned MNIST (chance: 0.1), as an int8 model
    assert abs(tflite_acc - keras_acc) <= 0.03, (tflite_acc, keras_acc)
    par = tfl.parity(qat.student, path, x_test)
    assert par["mean_lsb"] < 1.0, par
    assert par["top1_agreement"] >= 0.97, par


def test_quantization_aware_shares_terms_and_compiles(float_distiller, mnist_small):
    # The QAT step has its own name; Keras' `Model.quantize` (post-training int8/int4
    # weights) keeps its meaning. The new Distiller shares the trained terms.
    (x, _), _ = mnist_small
    qat = float_distiller.quantization_aware(calibration_data=x[:64])
    assert [id(t) for t in qat.knowledge] == [id(t) for t in float_distiller.knowledge]
    assert is_quantized(qat.student) and qat.compiled
