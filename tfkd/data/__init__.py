"""Inputs for distillation, and teacher-output caching.

Loading (every loader returns a `Splits` of in-memory numpy arrays, images as uint8 HWC):

- `load_npz(path)`: `.npz` archives with `x_train/y_train/x_test/y_test` (Keras' layout) or
  `train_images/train_labels/...` (MedMNIST's layout), optional validation split.
- `load_image_folder(path, image_size)`: `root/<class>/*.jpg` or `root/{train,test}/<class>/...`.
- `load_tfds(name, download=...)`: a TensorFlow Datasets name (users with internet; offline
  the data must already be in `data_dir`).
- `load(source)` picks one of the three from the source's form.

Semantic segmentation (images + class-id masks; `tfkd.data.segmentation`):
`load_segmentation_npz`, `load_segmentation_folder`, `check_masks`, `masks_from_colors`,
`segmentation_augmentation` and `segmentation_dataset` (mask-aware augmentation, padding
labelled with the ignore label).

Super-resolution (HR image folders, bicubic LR inputs, patch pipelines; import the module
itself, `tfkd.data.super_resolution`: it scores with `tfkd.tflite`'s Y channel, which
`import tfkd.data` does not load): `load_sr_folder`, `downscale`, `sr_pairs`, `sr_dataset`.

Faces / re-identification (identities; `tfkd.data.faces`): `load_faces` (ORL's `.npz`, or
`root/<identity>/` folders), `open_set_split`, `gallery_probe_split`, `face_dataset` (P x K
identity batches), `low_resolution` / `downscale`.

Teacher-output caching: when the input pipeline is deterministic, the teacher's outputs
(logits and the features the Distiller's knowledge terms need) are the same every epoch.
`cache_teacher(distiller, x, y)` computes them once and returns a `tf.data.Dataset` whose
batches are `({"inputs": x, "teacher": {"outputs": ..., "features": {...}}}, y)`; the
Distiller uses that teacher view instead of running the teacher, so a step runs only the
student. A random pipeline (augmentation) would make the cached view stale, so it is refused:

    >>> ds = tfkd.data.cache_teacher(distiller, x_train, y_train, batch_size=64)
    >>> distiller.fit(ds, epochs=30)                      # teacher never runs again
    >>> # With augmentation, feed the same augmented view to teacher and student instead:
    >>> ds = tfkd.data.make_dataset(x_train, y_train, 64, augment=flip_and_crop, shuffle=True)
    >>> distiller.fit(ds, epochs=30)
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from tfkd import _compat, cached

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# Array-name layouts accepted in an .npz, tried in order: (x, y) names per split.
NPZ_LAYOUTS = (
    {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")},
    {"train": ("train_images", "train_labels"), "val": ("val_images", "val_labels"),
     "test": ("test_images", "test_labels")},
)


class DataError(ValueError):
    """A data source that cannot be used as given; the message says what to change."""


class RandomPipelineError(ValueError):
    """Teacher outputs cannot be cached because the input pipeline is random."""


@dataclasses.dataclass
class Splits:
    """In-memory splits. `x` arrays are (N, H, W, C); `y` are (N,) class ids or (N, K) multi-hot,
    or (N, H, W) class-id masks for segmentation.

    `val` may be None. `class_names` has one name per class a model predicts. For masks,
    `ignore_label` is the id of pixels that belong to no class (not counted in `num_classes`),
    `class_colors` one RGB colour per class (for pictures) and `ignore_color` the ignore
    label's colour, each None when unknown.
    """

    train: tuple
    test: tuple
    class_names: list
    val: tuple | None = None
    source: str = ""
    ignore_label: int | None = None
    class_colors: np.ndarray | None = None
    ignore_color: np.ndarray | None = None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def image_shape(self):
        return tuple(self.train[0].shape[1:])

    def subset(self, max_train=None, max_test=None):
        """The first `max_train` / `max_test` samples (the loaders keep a shuffled order)."""
        cut = lambda split, n: split if split is None or not n else (split[0][:n], split[1][:n])
        return dataclasses.replace(self, train=cut(self.train, max_train),
                                   test=cut(self.test, max_test), val=cut(self.val, max_test))

    def describe(self):
        parts = [f"{name} {len(s[0])}" for name, s in
                 (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None]
        ignore = "" if self.ignore_label is None else f", ignore label {self.ignore_label}"
        return (f"{self.source or 'data'}: {', '.join(parts)} images of shape "
                f"{self.image_shape}, {self.num_classes} classes{ignore}")


# -- checks -------------------------------------------------------------------------------
def check_labels(y, num_classes, what="labels"):
    """Raises DataError when class ids fall outside [0, num_classes) (or multi-hot width differs)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        if y.shape[1] != num_classes:
            raise DataError(
                f"The {what} are multi-hot with {y.shape[1]} columns but there are "
                f"{num_classes} classes.")
        bad = np.unique(y[(y != 0) & (y != 1)])
        if bad.size:
            raise DataError(f"The multi-hot {what} must be 0 or 1; found {bad[:5].tolist()}.")
        return y
    y = y.reshape(len(y))
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"The {what} must be integer class ids, got values like {y[:3]}.")
    outside = (y < 0) | (y >= num_classes)
    if np.any(outside):
        bad = np.unique(y[outside])
        raise DataError(
            f"{int(outside.sum())} of {len(y)} {what} are outside the {num_classes} classes "
            f"(ids 0..{num_classes - 1}): found {bad[:10].tolist()}. Check the class count "
            "(`class_names` in the .npz, the number of class folders) or the label encoding.")
    return y


def output_width(model):
    """Width of a classifier's (single) output."""
    shape = model.output_shape if hasattr(model, "output_shape") else None
    if isinstance(shape, list):
        shape = shape[0]
    return None if shape is None else shape[-1]


def check_teacher(teacher, num_classes, image_shape=None):
    """Raises DataError when a teacher's output width or input size does not fit the data."""
    width = output_width(teacher)
    if width is not None and width != num_classes:
        raise DataError(
            f"The teacher `{teacher.name}` outputs {width} values but the data has "
            f"{num_classes} classes. Use a teacher trained on these classes (or retrain its "
            "head), or load the data set it was trained on.")
    if image_shape is not None and getattr(teacher, "inputs", None):
        t_shape = tuple(teacher.inputs[0].shape[1:])
        if None not in t_shape and t_shape[-1] != image_shape[-1]:
            raise DataError(
                f"The teacher takes {t_shape[-1]}-channel images {t_shape} but the data has "
                f"{image_shape[-1]} channels {tuple(image_shape)}.")


def _as_images(x, what):
    x = np.asarray(x)
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{what} must be images (N, H, W[, C]); got shape {x.shape}.")
    return x


def _as_labels(y):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        y = y.astype("int32")
    return y


# -- .npz ---------------------------------------------------------------------------------
def load_npz(path, num_classes=None, class_names=None):
    """Loads an `.npz` archive into `Splits`.

    Accepted layouts: `x_train, y_train, x_test, y_test[, x_val, y_val]` (Keras) or
    `train_images, train_labels, test_images, test_labels[, val_images, val_labels]`
    (MedMNIST). `class_names` is read from the archive when present; otherwise the class
    count is `num_classes` or one more than the largest label.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"No .npz file at '{path}'.")
    with np.load(path) as archive:
        names = set(archive.files)
        for layout in NPZ_LAYOUTS:
            required = layout["train"] + layout["test"]
            if all(k in names for k in required):
                break
        else:
            expected = " or ".join(
                "{" + ", ".join(lay["train"] + lay["test"]) + "}" for lay in NPZ_LAYOUTS)
            raise DataError(
                f"'{path}' does not hold the expected arrays {expected}; it has "
                f"{sorted(names)}. Rename the arrays (np.savez(path, x_train=..., "
                "y_train=..., x_test=..., y_test=...)).")
        splits = {}
        for split, (xk, yk) in layout.items():
            if xk in names and yk in names:
                x, y = _as_images(archive[xk], f"'{xk}' in {path.name}"), _as_labels(archive[yk])
                if len(x) != len(y):
                    raise DataError(f"'{xk}' has {len(x)} images but '{yk}' {len(y)} labels.")
                splits[split] = (x, y)
        if class_names is None and "class_names" in names:
            class_names = [str(c) for c in archive["class_names"]]
    train_y = splits["train"][1]
    if class_names is None:
        if num_classes is None:
            num_classes = train_y.shape[1] if train_y.ndim == 2 else int(train_y.max()) + 1
        class_names = [str(i) for i in range(num_classes)]
    elif num_classes is not None and num_classes != len(class_names):
        raise DataError(f"num_classes={num_classes} but '{path}' names {len(class_names)} "
                        "classes in `class_names`.")
    for split, (_, y) in splits.items():
        check_labels(y, len(class_names), what=f"{split} labels of '{path.name}'")
    return Splits(train=splits["train"], test=splits["test"], val=splits.get("val"),
                  class_names=class_names, source=str(path))


# -- image folders ------------------------------------------------------------------------
def _class_folders(root):
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _count_images(folder):
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def _check_class_folder_layout(root):
    classes = _class_folders(root)
    counts = {c.name: _count_images(c) for c in classes}
    with_images = [c for c, n in counts.items() if n]
    if not with_images:
        loose = _count_images(root) if root.exists() else 0
        hint = (f" It has {loose} images at the top level: put each class in its own "
                "sub-folder.") if loose else ""
        raise DataError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of '{root}'. "
            f"Expected '{root}/<class_name>/<image>'.{hint}")
    if len(with_images) < 2:
        raise DataError(
            f"'{root}' has images for only one class ({with_images[0]!r}); classification needs "
            "at least two class sub-folders with images.")
    return [c.name for c in classes]


def _read_folder(root, class_names, image_size, color_mode):
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(
        root, labels="inferred", label_mode="int", class_names=class_names,
        color_mode=color_mode, image_size=image_size, batch_size=None, shuffle=False,
        verbose=False)
    xs, ys = [], []
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            x, y = next(iterator)
        except StopIteration:
            break
        except tf.errors.InvalidArgumentError as e:
            # Decoding is lazy and TF's message does not name the file; `shuffle=False` keeps
            # the dataset in `file_paths` order, so the failing one is the next path.
            bad = ds.file_paths[len(xs)] if len(xs) < len(ds.file_paths) else root
            # TF's message ends with the decoder's reason after a chain of "where: " parts.
            lines = (e.message or "").strip().splitlines()
            reason = lines[0].rsplit(": ", 1)[-1].strip().rstrip(".") if lines else "corrupt"
            raise DataError(
                f"Cannot decode the image '{bad}' ({reason}). "
                "Remove the file from the folder, or re-save it as a valid JPEG/PNG/BMP/GIF."
            ) from e
        xs.append(np.clip(np.round(x), 0, 255).astype("uint8"))
        ys.append(y)
    return np.stack(xs), np.asarray(ys, "int32")


def load_image_folder(path, image_size=(32, 32), test_fraction=0.2, seed=0, color_mode="rgb"):
    """Loads a folder of images, one sub-folder per class, resized to `image_size`.

    Layouts: `root/train/<class>/...` with `root/test/<class>/...` (or `val/`), or
    `root/<class>/...`, split here into train and test (`test_fraction`, stratified and
    seeded). Images are kept as uint8 in memory.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder.")
    image_size = tuple(image_size)
    if (root / "train").is_dir():
        class_names = _check_class_folder_layout(root / "train")
        test_root = next((root / n for n in ("test", "val", "validation")
                          if (root / n).is_dir()), None)
        train = _read_folder(root / "train", class_names, image_size, color_mode)
        if test_root is None:
            train, test = _split(train, test_fraction, seed)
        else:
            extra = sorted(set(c.name for c in _class_folders(test_root)) - set(class_names))
            if extra:
                raise DataError(f"'{test_root}' has classes not in train: {extra}.")
            test = _read_folder(test_root, class_names, image_size, color_mode)
    else:
        class_names = _check_class_folder_layout(root)
        train, test = _split(_read_folder(root, class_names, image_size, color_mode),
                             test_fraction, seed)
    train = _shuffle(train, seed)
    return Splits(train=train, test=test, class_names=class_names, source=str(root))


def _shuffle(split, seed):
    order = np.random.default_rng(seed).permutation(len(split[0]))
    return split[0][order], split[1][order]


def _split(data, test_fraction, seed):
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    x, y = data
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test_idx.extend(idx[: max(1, int(round(len(idx) * test_fraction)))].tolist())
    mask = np.zeros(len(y), bool)
    mask[test_idx] = True
    return (x[~mask], y[~mask]), (x[mask], y[mask])


# -- tfds -----------------------------------------------------------------------------------
def load_tfds(name, download=False, data_dir=None, image_size=None, image_key="image",
              label_key="label"):
    """Loads a TensorFlow Datasets image-classification set into memory.

    `download=True` fetches it (needs internet); offline, it must already be prepared in
    `data_dir` (tfds' default `~/tensorflow_datasets`). The test split is `test`, else
    `validation`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - an install problem
        raise DataError("tfds names need tensorflow-datasets: pip install 'tfkd[recipes]'.") from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"'{name}' is not a file, a folder, nor a known tfds name ({first_line}).") from e
    if download:
        builder.download_and_prepare()
    elif not _tfds_prepared(builder):
        raise DataError(
            f"The tfds data set '{name}' is not prepared in '{builder.data_dir}'. Pass "
            "download=True on a machine with internet, or data_dir= the folder where it is "
            "prepared.")
    splits = list(builder.info.splits)
    test_name = next((s for s in ("test", "validation") if s in splits), None)
    if "train" not in splits or test_name is None:
        raise DataError(f"tfds '{name}' has splits {splits}; need 'train' and 'test'/'validation'.")
    features = builder.info.features
    class_names = list(features[label_key].names)

    def read(split):
        ds = builder.as_dataset(split=split, shuffle_files=False)
        xs, ys = [], []
        for ex in ds.as_numpy_iterator():
            img = ex[image_key]
            if image_size is not None and tuple(img.shape[:2]) != tuple(image_size):
                import tensorflow as tf

                img = tf.image.resize(img, image_size).numpy().round().clip(0, 255)
            xs.append(np.asarray(img, "uint8"))
            ys.append(ex[label_key])
        return _as_images(np.stack(xs), split), np.asarray(ys, "int32")

    return Splits(train=read("train"), test=read(test_name), class_names=class_names,
                  source=f"tfds:{name}")


def _tfds_prepared(builder):
    if hasattr(builder, "is_prepared"):
        return builder.is_prepared()
    import tensorflow as tf

    return tf.io.gfile.exists(builder.data_dir)


def load(source, image_size=None, download=False, data_dir=None, num_classes=None):
    """`.npz` file, image folder or tfds name -> `Splits`."""
    source = os.fspath(source)
    path = pathlib.Path(source)
    if source.endswith(".npz"):
        return load_npz(path, num_classes=num_classes)
    if path.is_dir():
        return load_image_folder(path, image_size=image_size or (32, 32))
    if path.exists():
        raise DataError(f"'{source}' is a file but not an .npz archive.")
    if os.sep in source or source.startswith("."):
        raise DataError(f"'{source}' does not exist.")
    return load_tfds(source, download=download, data_dir=data_dir, image_size=image_size)


# -- tf.data ------------------------------------------------------------------------------
def make_dataset(x, y=None, batch_size=32, sample_weight=None, augment=None, shuffle=False,
                 seed=None, dtype="float32"):
    """Batches in-memory arrays as a `tf.data.Dataset`, cast to `dtype`.

    `augment` (a callable, e.g. a Keras augmentation layer or `keras.Sequential` of them) is
    applied per batch in the pipeline, so that the Distiller feeds the same augmented view to
    the teacher and the student. `shuffle` reshuffles every epoch.
    """
    import tensorflow as tf

    parts = (x,) + tuple(p for p in (y, sample_weight) if p is not None)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(*batch):
        xb = tf.nest.map_structure(lambda t: tf.cast(t, dtype), batch[0])
        if augment is not None:
            xb = augment(xb, training=True) if _takes_training(augment) else augment(xb)
        return (xb,) + batch[1:] if len(batch) > 1 else xb

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _takes_training(fn):
    import keras

    return isinstance(fn, keras.layers.Layer)


# -- randomness detection -------------------------------------------------------------------
_RANDOM_OPS = ("Random", "Rng", "StatefulUniform", "StatefulStandardNormal", "Multinomial",
               "TruncatedNormal", "SampleDistortedBoundingBox", "NonDeterministicInts")
_ORDER_ONLY_OPS = {"ShuffleDataset", "ShuffleDatasetV2", "ShuffleDatasetV3",
                   "ShuffleAndRepeatDataset", "ShuffleAndRepeatDatasetV2"}
_OPAQUE_OPS = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
_RANDOM_LAYER_NAMES = ("Random", "RandAugment", "AugMix", "MixUp", "CutMix", "GaussianNoise",
                       "GaussianDropout", "AlphaDropout", "Dropout", "SpatialDropout")


def random_ops(dataset):
    """Names of the random (or opaque Python) ops in a `tf.data` pipeline's graph.

    Shuffling changes only the order of samples, not their content, and is not reported.
    Python functions (`tf.py_function`, `numpy_function`) cannot be looked into and are
    reported as random.
    """
    graph = _compat.dataset_graph_def(dataset)
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops |= {n.op for n in fn.node_def}
    found = {op for op in ops if op not in _ORDER_ONLY_OPS
             and (op in _OPAQUE_OPS or any(key in op for key in _RANDOM_OPS))}
    return sorted(found)


def _is_random_layer(layer):
    import keras

    if _compat.seed_generators(layer):
        return True
    if any(isinstance(v, keras.random.SeedGenerator) for v in vars(layer).values()):
        return True
    mro = [c.__name__ for c in type(layer).__mro__]
    if "BaseImageAugmentationLayer" in mro:  # keras-cv augmentation layers
        return True
    return type(layer).__name__.startswith(_RANDOM_LAYER_NAMES)


def random_layers(obj):
    """Paths of the random layers (augmentation, noise, dropout) inside a layer or model."""
    import keras

    if obj is None or not isinstance(obj, keras.layers.Layer):
        return []
    found = [obj.name] if _is_random_layer(obj) else []
    for layer in _compat.sublayers(obj):
        if _is_random_layer(layer):
            found.append(f"{obj.name}/{layer.name}")
    return found


_CONSISTENT_ALTERNATIVE = (
    "Caching would freeze one random draw and reuse it every epoch. Either drop the "
    "augmentation to cache, or do not cache and put the augmentation in the input pipeline, "
    "where teacher and student see the same augmented view: "
    "distiller.fit(tfkd.data.make_dataset(x, y, batch_size, augment=<your augmentation>, "
    "shuffle=True)). If you know the pipeline is deterministic, pass "
    "assume_deterministic=True.")


def check_cacheable(distiller, data=None, augment=None, assume_deterministic=False):
    """Raises RandomPipelineError when the teacher's view of the data is not the same every epoch."""
    import tensorflow as tf

    if distiller.teacher is None:
        raise ValueError("This Distiller has no teacher, so there is nothing to cache.")
    if augment is not None and augment is not False:
        raise RandomPipelineError(
            f"cache_teacher got augment={augment!r}. " + _CONSISTENT_ALTERNATIVE)
    layers = random_layers(distiller.teacher_input)
    if layers and not assume_deterministic:
        raise RandomPipelineError(
            f"The Distiller's teacher_input has random layers {layers}: the teacher would see "
            "a new view every step. " + _CONSISTENT_ALTERNATIVE)
    if isinstance(data, tf.data.Dataset) and not assume_deterministic:
        ops = random_ops(data)
        if ops:
            raise RandomPipelineError(
                f"The tf.data pipeline contains random or opaque ops {ops}. "
                + _CONSISTENT_ALTERNATIVE)


def _dataset_to_arrays(dataset, input_rank):
    """Materialises a finite (x, y[, w]) dataset, batched or not, into numpy arrays."""
    import tensorflow as tf

    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise DataError("cache_teacher needs a finite data set; this one repeats forever "
                        "(remove .repeat()).")
    spec = dataset.element_spec
    first = spec[0] if isinstance(spec, tuple) else spec
    first = tf.nest.flatten(first)[0]
    if first.shape.rank == input_rank - 1:
        dataset = dataset.batch(256)
    parts = None
    for element in dataset.as_numpy_iterator():
        element = element if isinstance(element, tuple) else (element,)
        if parts is None:
            parts = [[] for _ in element]
        for store, value in zip(parts, element):
            store.append(value)
    if parts is None:
        raise DataError("The data set is empty.")
    return [np.concatenate(p) if not isinstance(p[0], dict) else
            {k: np.concatenate([q[k] for q in p]) for k in p[0]} for p in parts]


def teacher_outputs(distiller, x, batch_size=256):
    """Runs the Distiller's teacher once over `x` in inference mode.

    Returns `{"outputs": ..., "features": {name: array}}` with one row per sample: the
    teacher's outputs and every feature the Distiller's knowledge terms asked for.
    """
    import keras

    n = len(keras.tree.flatten(x)[0])
    chunks = []
    for start in range(0, n, batch_size):
        xb = keras.tree.map_structure(lambda a: np.asarray(a[start:start + batch_size],
                                                           "float32"), x)
        view = distiller.run_teacher(xb)
        chunks.append({"outputs": keras.tree.map_structure(np.asarray, view.outputs),
                       "features": {k: np.asarray(v) for k, v in view.features.items()}})
    return keras.tree.map_structure(lambda *a: np.concatenate(a), *chunks)


def cache_teacher(distiller, x, y=None, batch_size=32, sample_weight=None, shuffle=True,
                  seed=None, augment=None, assume_deterministic=False, teacher_batch_size=256,
                  max_bytes=4 * 2**30):
    """Computes the teacher's outputs once; returns a dataset on which a step runs only the student.

    Args:
        distiller: a `tfkd.Distiller` with a teacher.
        x, y, sample_weight: in-memory arrays, or `x` a finite `tf.data.Dataset` of (x, y[, w]),
            batched or not (it must not be random: see below).
        batch_size: batch size of the returned dataset.
        shuffle, seed: reshuffle the cached samples every epoch (each sample keeps its
            teacher outputs: shuffling changes the order, not the pairing).
        augment: must be None. Caching freezes the teacher's view; an augmentation would
            make it stale every epoch, so it is refused (`RandomPipelineError`) with the
            consistent alternative: augment in the pipeline and do not cache
            (`make_dataset(x, y, batch_size, augment=...)`).
        assume_deterministic: skip the randomness checks (for pipelines flagged as random
            that you know are not, e.g. a `tf.py_function` that only decodes).
        teacher_batch_size: batch size of the single teacher pass.
        max_bytes: refuse to cache more than this many bytes of teacher outputs (features
            of large maps cost memory: e.g. 8x8x64 float32 is 16 kB a sample).

    Returns:
        A `tf.data.Dataset` of `({"inputs": x, "teacher": {"outputs": ..., "features": ...}},
        y[, sample_weight])`, which `Distiller.fit` / `evaluate` take directly.

    Raises:
        RandomPipelineError: the pipeline or the teacher's input adapter is random.
    """
    import keras
    import tensorflow as tf

    check_cacheable(distiller, x, augment=augment, assume_deterministic=assume_deterministic)
    input_rank = len(distiller.teacher.inputs[0].shape) if getattr(
        distiller.teacher, "inputs", None) else 4
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Pass labels inside the tf.data.Dataset, not as `y`.")
        parts = _dataset_to_arrays(x, input_rank)
        x, y, sample_weight = (parts + [None, None])[:3]
    n = len(keras.tree.flatten(x)[0])
    for name, arr in (("y", y), ("sample_weight", sample_weight)):
        if arr is not None and len(arr) != n:
            raise DataError(f"x has {n} samples but {name} has {len(arr)}.")
    teacher = teacher_outputs(distiller, x, teacher_batch_size)
    nbytes = sum(a.nbytes for a in keras.tree.flatten(teacher))
    if nbytes > max_bytes:
        raise DataError(
            f"The teacher's outputs for {n} samples take {nbytes / 2**20:.0f} MiB, over "
            f"max_bytes={max_bytes / 2**20:.0f} MiB. Tap fewer or smaller features, cache a "
            "subset, raise max_bytes, or train without caching.")
    inputs = cached.pack(x, teacher["outputs"], teacher["features"])
    parts = (inputs,) + tuple(p for p in (y, sample_weight) if p is not None)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)

    def cast(*batch):
        first = dict(batch[0])
        first[cached.INPUTS] = tf.nest.map_structure(lambda t: tf.cast(t, "float32"),
                                                     first[cached.INPUTS])
        return (first,) + batch[1:] if len(batch) > 1 else first

    return ds.batch(batch_size).map(cast).prefetch(tf.data.AUTOTUNE)


# Segmentation lives in its own module; its names are part of `tfkd.data`.
from tfkd.data.segmentation import check_masks  # noqa: E402
from tfkd.data.segmentation import load_segmentation_folder  # noqa: E402
from tfkd.data.segmentation import load_segmentation_npz  # noqa: E402
from tfkd.data.segmentation import masks_from_colors  # noqa: E402
from tfkd.data.segmentation import segmentation_augmentation  # noqa: E402
from tfkd.data.segmentation import segmentation_dataset  # noqa: E402

# Object detection (box annotations, box-aware pipeline): `tfkd.data.detection`.
from tfkd.data.detection import DetectionSplits  # noqa: E402
from tfkd.data.detection import check_detection, detection_augmentation  # noqa: E402
from tfkd.data.detection import detection_dataset, load_detection  # noqa: E402
