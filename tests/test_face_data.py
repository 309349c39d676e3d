"""tfkd.data.faces: ORL / folder loading, open-set splits, identity batches, low resolution."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from shared_paths import SHARED_DATA  # noqa: E402
from tfkd.data import DataError  # noqa: E402
from tfkd.data import faces  # noqa: E402

ORL = SHARED_DATA / "orl_faces.npz"


@pytest.fixture(scope="module")
def orl():
    if not ORL.is_file():
        pytest.skip(f"{ORL} not found (CI lays ../shared/data beside the repo)")
    return faces.load_faces(ORL)


def test_orl_loads_as_rgb_faces_of_40_people(orl):
    x, y, names = orl
    assert x.shape == (400, 112, 92, 3) and x.dtype == np.uint8
    assert np.array_equal(x[..., 0], x[..., 2])  # gray repeated for MediaPipe's RGB input
    assert np.bincount(y).tolist() == [10] * 40 and names[:2] == ["s1", "s2"]
    gray, _, _ = faces.load_faces(ORL, channels=1)
    assert gray.shape == (400, 112, 92, 1) and np.array_equal(gray[..., 0], x[..., 0])


def test_a_folder_of_identities_loads_like_the_npz(tmp_path):
    rng = np.random.default_rng(0)
    for person in ("ann", "bob"):
        (tmp_path / person).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 16), dtype=np.uint8)).save(
                tmp_path / person / f"{i}.pgm")
    x, y, names = faces.load_faces(tmp_path)
    assert x.shape == (6, 20, 16, 3) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert names == ["ann", "bob"]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "bob" / "odd.png")
    with pytest.raises(DataError, match="different sizes.*crop / resize"):
        faces.load_faces(tmp_path)
    with pytest.raises(DataError, match="no face images"):
        faces.load_faces(tmp_path / "ann")
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match=r"lacks \['images', 'labels'\]"):
        faces.load_faces(tmp_path / "bad.npz")


def test_open_set_split_holds_out_whole_identities():
    y = np.repeat(np.arange(40), 10)
    train, test = faces.open_set_split(y, 10, seed=3)
    assert len(train) == 300 and len(test) == 100
    assert not set(y[train]) & set(y[test]) and len(set(y[test])) == 10
    again, _ = faces.open_set_split(y, 10, seed=3)
    other, _ = faces.open_set_split(y, 10, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(DataError, match="leave >= 2 identities"):
        faces.open_set_split(y, 39)
    gallery, probe = faces.gallery_probe_split(y[test], gallery_per_identity=2)
    assert len(gallery) == 20 and len(probe) == 80 and not set(gallery) & set(probe)
    assert np.bincount(y[test][gallery])[np.unique(y[test])].tolist() == [2] * 10
    assert faces.relabel(y[test]).max() == 9


def test_identity_batches_hold_k_faces_of_p_people():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 12, 10, 3), dtype=np.uint8)
    y = np.repeat(np.arange(6), 10)
    ds = faces.face_dataset(x, y, batch_size=12, identities_per_batch=3, augment=True)
    batches = list(ds)
    assert len(batches) == 5  # len(x) // batch_size
    for images, labels in batches:
        counts = np.bincount(labels.numpy(), minlength=6)
        assert sorted(counts[counts > 0].tolist()) == [4, 4, 4]
        assert images.shape == (12, 12, 10, 3) and images.dtype.name == "float32"
    with pytest.raises(DataError, match="identities_per_batch=8"):
        faces.face_dataset(x, y, batch_size=12, identities_per_batch=8)


def test_low_resolution_faces_are_the_layer_rounded():
    x = np.random.default_rng(0).integers(0, 255, (3, 112, 92, 3)).astype(np.uint8)
    low = faces.downscale(x, 4)
    assert low.shape == (3, 28, 23, 3)
    layer = np.asarray(faces.low_resolution(4, x.shape[1:])(x.astype("float32")))
    np.testing.assert_array_equal(low, np.clip(np.round(layer), 0, 255))
    with pytest.raises(DataError, match="smaller factor"):
        faces.low_resolution(40, (112, 92))
