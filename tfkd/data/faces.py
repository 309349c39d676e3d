"""Face recognition / re-identification data: identities, open-set splits, identity batches.

- `load_faces(path, channels=3)`: `(images, labels)`, uint8 (N, H, W, C) and int (N,)
  identities, from an `.npz` with `images` / `labels` (the layout of ORL's
  `orl_faces.npz`) or a folder `root/<identity>/*.{png,jpg,pgm,...}`. Grayscale faces are
  repeated on 3 channels by default: MediaPipe's ImageEmbedder takes RGB models only.
- `open_set_split(labels, num_test_identities, seed)`: indices of training and test faces
  whose identities are disjoint (face papers' open-set protocol: a model is scored on people
  it never saw); `gallery_probe_split` splits the test faces into an enrolled gallery and
  probes for closed-set identification.
- `relabel(labels)`: identities as 0..K-1 (the training head's classes).
- `face_dataset(images, labels, batch_size, identities_per_batch=...)`: a `tf.data`
  pipeline with Keras augmentation layers (flip, small shifts, contrast) and, for the
  relational / pair terms, P x K batches (P identities, K faces each) so every batch holds
  positive pairs.
- `downscale(images, factor)`: the low-resolution faces of [87] / [99] (bicubic,
  antialiased), the same op as `low_resolution(factor, image_shape)`, the Keras layer a
  `Distiller(student_input=...)` applies to the teacher's full faces.
"""
import pathlib

import numpy as np

from tfkd.data import DataError

FACE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".pgm", ".bmp")


def _as_channels(images, channels, source):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{source}: faces must be (N, H, W), (N, H, W, 1) or (N, H, W, 3) "
                        f"images, got shape {images.shape}.")
    if channels not in (1, 3):
        raise DataError(f"load_faces: channels must be 1 or 3, got {channels!r}.")
    if images.shape[-1] == 1 and channels == 3:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 3 and channels == 1:
        images = np.round(images @ np.array([0.299, 0.587, 0.114])).astype(images.dtype)[..., None]
    return np.ascontiguousarray(images.astype(np.uint8))


def _read_folder(root):
    import keras

    people = sorted(p for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for identity, folder in enumerate(people):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in FACE_EXTENSIONS:
                images.append(np.asarray(keras.utils.load_img(f)))
                labels.append(identity)
    if not images:
        raise DataError(f"load_faces: {root} holds no face images in <identity>/ folders "
                        f"(extensions {', '.join(FACE_EXTENSIONS)}).")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"load_faces: the faces in {root} have different sizes {sorted(shapes)[:3]}"
                        "; crop / resize them to one size first (aligned face crops).")
    return np.stack(images), np.asarray(labels), [p.name for p in people]


def load_faces(path, channels=3):
    """Faces and their identities.

    Args:
        path: an `.npz` with `images` (N, H, W[, C]) uint8 and `labels` (N,) int (optional
            `subject_names`), or a folder with one subfolder of face crops per identity.
        channels: 3 (gray repeated, for MediaPipe's RGB-only ImageEmbedder) or 1.

    Returns:
        (images uint8 (N, H, W, channels), labels int64 (N,), names: one per identity).

    Example:

    >>> from tfkd.data import faces
    >>> x, y, names = faces.load_faces("../shared/data/orl_faces.npz")  # doctest: +SKIP
    >>> x.shape, len(names)                                             # doctest: +SKIP
    ((400, 112, 92, 3), 40)
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"load_faces: {path} does not exist.")
    if path.is_dir():
        images, labels, names = _read_folder(path)
    else:
        with np.load(path) as data:
            missing = {"images", "labels"} - set(data.files)
            if missing:
                raise DataError(f"load_faces: {path} lacks {sorted(missing)}; it has "
                                f"{data.files}. Save faces as images=(N, H, W[, C]) uint8 and "
                                "labels=(N,) identities.")
            images, labels = data["images"], data["labels"]
            names = ([str(n) for n in data["subject_names"]] if "subject_names" in data.files
                     else None)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(labels) != len(images):
        raise DataError(f"load_faces: {len(images)} images but {len(labels)} labels in {path}.")
    if names is None:
        names = [str(i) for i in np.unique(labels)]
    return _as_channels(images, channels, str(path)), labels, names


def open_set_split(labels, num_test_identities=10, seed=0):
    """(train indices, test indices): the faces of `num_test_identities` identities drawn by
    `seed` are the test set, every face of the others the training set."""
    labels = np.asarray(labels)
    people = np.unique(labels)
    if not 2 <= num_test_identities <= len(people) - 2:
        raise DataError(f"open_set_split: num_test_identities must leave >= 2 identities on "
                        f"each side; there are {len(people)}, got {num_test_identities}.")
    test_people = np.random.default_rng(seed).choice(people, num_test_identities, replace=False)
    test = np.isin(labels, test_people)
    return np.flatnonzero(~test), np.flatnonzero(test)


def gallery_probe_split(labels, gallery_per_identity=1, seed=0):
    """(gallery indices, probe indices): `gallery_per_identity` faces of each identity are
    enrolled, the rest are probes (closed-set identification: rank-1 = the probe's nearest
    gallery face has its identity)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    gallery, probe = [], []
    for person in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == person))
        if len(idx) <= gallery_per_identity:
            raise DataError(f"gallery_probe_split: identity {person} has {len(idx)} faces; "
                            f"gallery_per_identity={gallery_per_identity} leaves no probe.")
        gallery.extend(idx[:gallery_per_identity])
        probe.extend(idx[gallery_per_identity:])
    return np.sort(gallery), np.sort(probe)


def relabel(labels):
    """Identities mapped to 0..K-1 in sorted order (the training head's classes)."""
    return np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)


def augmentation(seed=None):
    """Keras layers for faces: horizontal flip, shifts of 5% and zoom of 5%, contrast 0.2
    (aligned crops: no rotation or vertical flip)."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="nearest", seed=seed),
        keras.layers.RandomZoom(0.05, fill_mode="nearest", seed=seed),
        keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
    ], name="face_augmentation")


def _pk_order(labels, identities_per_batch, per_identity, steps, rng):
    """Indices of `steps` P x K batches: P identities, K faces each (with replacement when an
    identity has fewer than K)."""
    people = np.unique(labels)
    by_person = {p: np.flatnonzero(labels == p) for p in people}
    order = []
    for _ in range(steps):
        for p in rng.choice(people, identities_per_batch, replace=False):
            idx = by_person[p]
            order.extend(rng.choice(idx, per_identity, replace=len(idx) < per_identity))
    return np.asarray(order)


def face_dataset(images, labels, batch_size=32, augment=True, shuffle=True, seed=0,
                 identities_per_batch=None):
    """Batches of (float32 faces in [0, 255], int labels) for `fit`.

    Args:
        images, labels: from `load_faces` (and `relabel` for a training head).
        batch_size: faces per batch.
        augment: apply `augmentation()` (only on the training set).
        shuffle: a new order every epoch (ignored with `identities_per_batch`, which is random).
        seed: of the order and the augmentation.
        identities_per_batch: P of P x K batches (K = batch_size // P faces of each); an
            epoch has as many batches as `len(images) // batch_size`. None: plain batches.
    """
    import tensorflow as tf

    images, labels = np.asarray(images), np.asarray(labels).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"face_dataset: {len(images)} images but {len(labels)} labels.")
    if identities_per_batch:
        people = len(np.unique(labels))
        k = batch_size // identities_per_batch
        if identities_per_batch > people or k < 2:
            raise DataError(f"face_dataset: identities_per_batch={identities_per_batch} needs "
                            f"<= {people} identities and batch_size >= 2 x it (K >= 2 faces "
                            f"of each), got batch_size={batch_size}.")
        steps = max(1, len(images) // batch_size)
        rng = np.random.default_rng(seed)

        def epoch():
            order = _pk_order(labels, identities_per_batch, k, steps, rng)
            yield from zip(images[order], labels[order])

        sig = (tf.TensorSpec(images.shape[1:], tf.as_dtype(images.dtype)),
               tf.TensorSpec((), tf.int64))
        ds = tf.data.Dataset.from_generator(epoch, output_signature=sig)
        # A known length: Keras then sizes its epochs instead of probing for the end.
        ds = ds.apply(tf.data.experimental.assert_cardinality(steps * identities_per_batch * k))
        ds = ds.batch(identities_per_batch * k, drop_remainder=True)
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augment:
        layer = augmentation(seed)
        ds = ds.map(lambda x, y: (layer(x, training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def low_resolution(factor, image_shape):
    """The Keras layer that makes low-resolution faces: bicubic, antialiased resizing to
    1/factor of `image_shape` (H, W, ...). In training (`student_input=`) its float output
    is what the student sees; `downscale` also rounds and clips it to pixels."""
    import keras

    h, w = _low_size(factor, image_shape)
    return keras.layers.Resizing(h, w, interpolation="bicubic", antialias=True,
                                 name=f"low_resolution_x{factor:g}")


def _low_size(factor, image_shape):
    if not factor >= 1:
        raise DataError(f"low resolution: factor must be >= 1, got {factor}.")
    h, w = int(round(image_shape[0] / factor)), int(round(image_shape[1] / factor))
    if min(h, w) < 4:
        raise DataError(f"low resolution: {image_shape[:2]} / {factor} leaves {h}x{w} pixels; "
                        "use a smaller factor.")
    return h, w


def downscale(images, factor):
    """Low-resolution faces through `low_resolution(factor, ...)`, rounded and clipped to
    [0, 255] like a camera's pixels (float32: what a Keras model or a uint8 .tflite takes)."""
    images = np.asarray(images)
    layer = low_resolution(factor, images.shape[1:])
    out = [np.asarray(layer(images[i:i + 64].astype(np.float32)))
           for i in range(0, len(images), 64)]
    return np.clip(np.round(np.concatenate(out)), 0, 255)
