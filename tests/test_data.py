"""tfkd.data: loaders, their bad-input errors, and teacher-output caching."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tfkd
from shared_paths import SHARED_DATA
from tfkd import data as tdata
from tiny_models import convnet


# -- loaders and bad input -------------------------------------------------------------------
def _write_images(folder, n, color):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.full((12, 10, 3), color, np.uint8)
        pixels[0, 0] = i  # make files differ
        Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder_loads_classes_and_splits(tmp_path):
    _write_images(tmp_path / "cat", 5, (200, 0, 0))
    _write_images(tmp_path / "dog", 5, (0, 0, 200))
    splits = tdata.load(tmp_path, image_size=(8, 8))
    assert splits.class_names == ["cat", "dog"]
    assert splits.train[0].shape == (8, 8, 8, 3) and splits.train[0].dtype == np.uint8
    assert len(splits.test[0]) == 2 and sorted(splits.test[1].tolist()) == [0, 1]
    # The class is in the pixels: red cats, blue dogs.
    x, y = splits.train
    assert np.all((x[..., 0].mean(axis=(1, 2)) > 100) == (y == 0))


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        _write_images(tmp_path / split / "a", n, (10, 10, 10))
        _write_images(tmp_path / split / "b", n, (250, 250, 250))
    splits = tdata.load_image_folder(tmp_path, image_size=(4, 4))
    assert len(splits.train[0]) == 6 and len(splits.test[0]) == 4


@pytest.mark.parametrize("layout", ["flat", "train_test"])
def test_corrupt_image_is_named(tmp_path, layout):
    root = tmp_path if layout == "flat" else tmp_path / "test"
    for base in ([tmp_path] if layout == "flat" else [tmp_path / "train", tmp_path / "test"]):
        _write_images(base / "a", 3, (10, 10, 10))
        _write_images(base / "b", 3, (250, 250, 250))
    bad = root / "b" / "1.png"
    bad.write_bytes(b"\x89PNG but then nothing an image decoder could read")
    with pytest.raises(tdata.DataError) as info:
        tdata.load_image_folder(tmp_path, image_size=(4, 4))
    message = str(info.value)
    assert f"'{bad}'" in message and "Remove the file" in message and "re-save" in message
    bad.unlink()  # without it the folder loads
    splits = tdata.load_image_folder(tmp_path, image_size=(4, 4))
    assert len(splits.train[0]) + len(splits.test[0]) == (5 if layout == "flat" else 11)


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(tdata.DataError, match="No images"):
        tdata.load(tmp_path)


def test_folder_with_loose_images_says_to_use_class_folders(tmp_path):
    _write_images(tmp_path, 3, (1, 2, 3))
    with pytest.raises(tdata.DataError, match="own sub-folder"):
        tdata.load(tmp_path)


def test_folder_with_one_class_is_refused(tmp_path):
    _write_images(tmp_path / "only", 4, (9, 9, 9))
    (tmp_path / "empty").mkdir()
    with pytest.raises(tdata.DataError, match="only one class.*'only'"):
        tdata.load(tmp_path)


def test_npz_without_expected_arrays_names_what_it_has(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), targets=np.zeros(4))
    with pytest.raises(tdata.DataError, match=r"it has \['images', 'targets'\]"):
        tdata.load(path)


def test_npz_labels_outside_class_count(tmp_path):
    path = tmp_path / "labels.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.array([0, 1, 2, 7]),
             x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.array([0, 1]),
             class_names=np.array(["a", "b", "c"]))
    with pytest.raises(tdata.DataError, match=r"1 of 4 train labels.*outside the 3 classes.*\[7\]"):
        tdata.load(path)
    with pytest.raises(tdata.DataError, match=r"outside the 2 classes.*\[-1\]"):
        tdata.check_labels(np.array([0, -1, 1]), 2)


def test_medmnist_layout_real_file():
    splits = tdata.load(SHARED_DATA / "breastmnist.npz")
    assert splits.train[0].shape == (546, 28, 28, 1)
    assert splits.val[0].shape == (78, 28, 28, 1) and splits.test[0].shape == (156, 28, 28, 1)
    assert splits.num_classes == 2 and splits.train[1].shape == (546,)
    assert np.bincount(splits.train[1]).tolist() == [147, 399]


def test_teacher_width_must_match_classes():
    teacher = convnet(width=4, classes=10)
    tdata.check_teacher(teacher, 10, (28, 28, 1))
    with pytest.raises(tdata.DataError, match="outputs 10 values but the data has 2 classes") \
            as info:
        tdata.check_teacher(teacher, 2)
    assert "--" not in str(info.value)  # the library names no recipe flag
    with pytest.raises(tdata.DataError, match="1-channel images"):
        tdata.check_teacher(teacher, 10, (28, 28, 3))


def test_unknown_tfds_name_and_offline_tfds(tmp_path):
    with pytest.raises(tdata.DataError, match="nor a known tfds name"):
        tdata.load("surely_not_a_dataset_name")
    with pytest.raises(tdata.DataError, match="not prepared.*download=True.*data_dir=") as info:
        tdata.load_tfds("mnist", data_dir=str(tmp_path))
    assert "--" not in str(info.value)


def test_library_messages_name_no_command_line_flags():
    # Messages name function arguments (download=True, data_dir=), never a recipe's --flag.
    # Every string of the library counts except docstrings (which may document a recipe).
    import ast
    import re
    from pathlib import Path

    flag = re.compile(r"(?<![\w-])--[a-z][a-z_]*")
    import tfkd

    root = Path(tfkd.__file__).resolve().parent
    files = sorted(root.rglob("*.py"))
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                      and isinstance(node.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings and flag.search(node.value):
                found.append(f"{path.name}:{node.lineno}: {flag.search(node.value)[0]}")
    assert len(files) > 10 and found == []


# -- teacher-output caching ------------------------------------------------------------------
def _distiller(seed_student=2):
    teacher = convnet(width=8, name="teacher", seed=1)
    student = convnet(width=4, name="student", seed=seed_student)
    distiller = tfkd.Distiller(
        student, teacher,
        knowledge=[tfkd.knowledge.SoftTargets(temperature=4.0),
                   tfkd.knowledge.AttentionTransfer([("block2", "block2")])],
        student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


class _TeacherMustNotRun:
    calls = 0

    def __call__(self, *args, **kwargs):
        type(self).calls += 1
        raise AssertionError("the teacher ran during cached training")


def test_cached_training_matches_uncached_and_never_runs_the_teacher(mnist_small):
    (x, y), _ = mnist_small
    x, y = x[:256], y[:256]
    uncached = _distiller()
    h_plain = uncached.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0).history

    cached = _distiller()
    ds = tdata.cache_teacher(cached, x, y, batch_size=64, shuffle=False)
    batch_x, _ = next(iter(ds))
    assert set(batch_x) == {"inputs", "teacher"}
    assert set(batch_x["teacher"]["features"]) == {"block2"}
    cached._taps.teacher = _TeacherMustNotRun()
    h_cached = cached.fit(ds, epochs=2, verbose=0).history
    assert _TeacherMustNotRun.calls == 0

    for key in ("loss", "student_loss", "soft_targets_loss", "attention_loss"):
        np.testing.assert_allclose(h_cached[key], h_plain[key], rtol=2e-4, err_msg=key)
    assert h_plain["loss"][1] < h_plain["loss"][0]  # it trained
    for a, b in zip(cached.student.get_weights(), uncached.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # The cached dataset also works for evaluate and predict (the teacher part is ignored).
    assert np.isfinite(cached.evaluate(ds, verbose=0)[0])
    assert cached.predict(ds, verbose=0).shape == (256, 10)


def test_cache_refuses_random_pipelines_and_offers_the_alternative(mnist_small):
    (x, y), _ = mnist_small
    x, y = x[:64], y[:64]
    distiller = _distiller()
    flip = keras.layers.RandomFlip("horizontal")
    with pytest.raises(tdata.RandomPipelineError, match="make_dataset.*augment="):
        tdata.cache_teacher(distiller, x, y, augment=flip)
    random_ds = tf.data.Dataset.from_tensor_slices((x, y)).map(
        lambda a, b: (tf.image.random_flip_left_right(a), b))
    with pytest.raises(tdata.RandomPipelineError, match="RandomUniform"):
        tdata.cache_teacher(distiller, random_ds)
    keras_random_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(
        lambda a, b: (flip(a, training=True), b))
    with pytest.raises(tdata.RandomPipelineError, match="StatelessRandom"):
        tdata.cache_teacher(distiller, keras_random_ds)
    py_ds = tf.data.Dataset.from_tensor_slices((x, y)).map(
        lambda a, b: (tf.numpy_function(lambda v: v, [a], tf.float32), b))
    with pytest.raises(tdata.RandomPipelineError, match="PyFunc"):
        tdata.cache_teacher(distiller, py_ds)

    noisy = tfkd.Distiller(convnet(4, name="s"), convnet(8, name="t"),
                           knowledge=[tfkd.knowledge.SoftTargets()],
                           teacher_input=keras.Sequential([keras.layers.GaussianNoise(0.1)]))
    with pytest.raises(tdata.RandomPipelineError, match="teacher_input has random layers"):
        tdata.cache_teacher(noisy, x, y)

    # Shuffling only reorders samples: a shuffled, deterministic tf.data pipeline is cached.
    ok = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=0).batch(16)
    ds = tdata.cache_teacher(distiller, ok, batch_size=32)
    assert sum(int(b[1].shape[0]) for b in ds) == 64
    # The consistent alternative named in the error: augmentation in the pipeline, no cache.
    aug = tdata.make_dataset(x, y, batch_size=32, augment=flip, shuffle=True, seed=0)
    history = distiller.fit(aug, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_cache_teacher_writes_the_cached_batch_format(mnist_small):
    from tfkd import cached as cached_format

    (x, y), _ = mnist_small
    distiller = _distiller()
    ds = tdata.cache_teacher(distiller, x[:48], y[:48], batch_size=16, shuffle=False)
    batch_x, batch_y = next(iter(ds))
    # Written in the format tfkd.cached reads: its split gives back the inputs and the
    # teacher's view of them, computed once.
    assert cached_format.is_cached(batch_x)
    inputs, view = cached_format.split(batch_x)
    np.testing.assert_allclose(inputs, x[:16], rtol=0, atol=0)
    np.testing.assert_allclose(view.outputs, distiller.teacher.predict(x[:16], verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert set(view.features) == {"block2"} and view.features["block2"].shape[0] == 16
    np.testing.assert_array_equal(batch_y, y[:16])


def test_cache_checks_sizes(mnist_small):
    (x, y), _ = mnist_small
    distiller = _distiller()
    with pytest.raises(tdata.DataError, match="over max_bytes"):
        tdata.cache_teacher(distiller, x[:64], y[:64], max_bytes=1000)
    with pytest.raises(tdata.DataError, match="x has 64 samples but y has 10"):
        tdata.cache_teacher(distiller, x[:64], y[:10])
    with pytest.raises(tdata.DataError, match="repeats forever"):
        tdata.cache_teacher(distiller, tf.data.Dataset.from_tensor_slices((x[:8], y[:8])).repeat())
