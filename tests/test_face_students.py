"""tfkd.students.embedding: face embedders, the cosine head, margin losses, int8 export."""
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfkd.students import embedding as emb  # noqa: E402


def np_margin_loss(cos, y, margin, scale, kind):
    """Float64 reference of ArcFace / CosFace (insightface's fallback past pi - m)."""
    cos = np.clip(cos.astype("float64"), -1 + 1e-7, 1 - 1e-7)
    logits = cos.copy()
    t = cos[np.arange(len(y)), y]
    if kind == "arcface":
        theta = np.arccos(t)
        target = np.where(t > math.cos(math.pi - margin), np.cos(theta + margin),
                          t - margin * math.sin(margin))
    else:
        target = t - margin
    logits[np.arange(len(y)), y] = target
    logits *= scale
    logits -= logits.max(1, keepdims=True)
    return -(logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(1)))


@pytest.mark.parametrize("cls,kind", [(emb.ArcFaceLoss, "arcface"), (emb.CosFaceLoss, "cosface")])
def test_margin_losses_match_a_float64_reference(cls, kind):
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, (16, 7)).astype("float32")
    cos[0, 3] = -0.99  # the label's angle past pi - m: ArcFace's fallback branch
    y = rng.integers(0, 7, 16)
    y[0] = 3
    loss = cls(margin=0.4, scale=16.0, reduction=None)
    np.testing.assert_allclose(np.asarray(loss(y, cos)), np_margin_loss(cos, y, 0.4, 16.0, kind),
                               rtol=2e-5, atol=2e-5)
    assert cls.from_config(loss.get_config()).margin == 0.4
    with pytest.raises(ValueError, match="margin must be >= 0 and scale > 0"):
        cls(margin=-1.0)


def test_cosine_head_and_exclusivity_against_numpy():
    rng = np.random.default_rng(1)
    head = emb.CosineHead(5, exclusivity=0.5)
    e = rng.normal(size=(4, 6)).astype("float32")
    out = np.asarray(head(e))
    w = head.kernel.numpy().astype("float64")
    wn = w / np.linalg.norm(w, axis=0)
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(out, en @ wn, atol=1e-5)
    c = wn.T @ wn
    np.fill_diagonal(c, -np.inf)
    np.testing.assert_allclose(float(head.losses[0]), 0.5 * c.max(1).mean(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(112, 92, 3), (28, 23, 3)])
def test_face_net_embeds_on_the_unit_sphere_at_full_and_low_resolution(shape):
    model = emb.face_net(shape, num_classes=30, embedding_dim=64, width=0.5)
    assert model.output.shape == (None, 30)
    embedder = emb.embedding_model(model)
    assert embedder.output.shape == (None, 64) and emb.embedding_model(embedder) is embedder
    faces = np.random.default_rng(0).uniform(0, 255, (3, *shape)).astype("float32")
    e = embedder.predict(faces, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert {"stage1", "stage4", "pool", "embedding"} <= {lyr.name for lyr in model.layers}
    # The last stage keeps >= MIN_FEATURE pixels a side at either resolution.
    assert min(model.get_layer("stage4").output.shape[1:3]) >= emb.MIN_FEATURE
    with pytest.raises(ValueError, match="has no layer 'emb'.*layer="):
        emb.embedding_model(model, layer="emb")


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="smaller than 6 pixels.*Resizing"):
        emb.face_net((5, 5, 3))
    with pytest.raises(ValueError, match="fixed"):
        emb.face_net((None, None, 3))
    with pytest.raises(ValueError, match="num_classes"):
        emb.face_net(num_classes=1)


def test_a_face_net_learns_identities_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    # 4 "people": each a fixed random pattern plus noise.
    people = rng.uniform(0, 255, (4, 24, 20, 3))
    y = np.repeat(np.arange(4), 8)
    x = np.clip(people[y] + rng.normal(0, 20, (32, 24, 20, 3)), 0, 255).astype("float32")
    keras.utils.set_random_seed(0)
    model = emb.face_net((24, 20, 3), num_classes=4, embedding_dim=16, width=0.5,
                         bn_momentum=0.8)
    model.compile(keras.optimizers.Adam(3e-3), emb.ArcFaceLoss(scale=16.0),
                  metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    model.save(tmp_path / "face.keras")
    loaded = keras.models.load_model(tmp_path / "face.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_int8_embedder_is_one_l2_normalization_op_and_agrees_with_qat(tmp_path):
    import tfkd.tflite as tfl
    from tfkd import quantization

    keras.utils.set_random_seed(0)
    model = emb.face_net((28, 24, 3), num_classes=5, embedding_dim=16, width=0.5)
    # Faces that stop at 200: only the fixed input range reads uint8 pixels at scale 1, which
    # the MediaPipe target's check demands (MediaPipe feeds raw pixels).
    x = np.random.default_rng(0).integers(0, 200, (24, 28, 24, 3)).astype("float32")
    qat = quantization.quantize_model(model, calibration_data=x, input_range=(0, 255))
    assert type(qat.get_layer("head")) is emb.CosineHead  # training-only head kept float
    embedder = emb.embedding_model(qat)
    path = tmp_path / "face_int8.tflite"
    report = tfl.convert(embedder, path, quantization="qat", target="mediapipe",
                         output_meaning="embedding")
    assert report.inputs[0].scale == 1.0
    assert report.is_fully_int8 and report.op_counts.get("L2_NORMALIZATION") == 1
    e_tfl = tfl.embeddings(str(path), x)
    e_keras = embedder.predict(x, verbose=0)
    # Both on TFLite's 1/128 output grid; an untrained net, so the figures are loose.
    cos = np.sum(e_tfl * e_keras, 1) / np.linalg.norm(e_tfl, axis=1) / np.linalg.norm(
        e_keras, axis=1)
    assert cos.mean() > 0.995 and cos.min() > 0.98, cos


def test_docstring_examples_run():
    import doctest

    from tfkd.data import faces

    for module in (emb, faces):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, (module.__name__, result)
