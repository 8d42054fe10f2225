from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
from PIL import Image

import dal_widgets as dal
from dal_widgets import DalWarning


@pytest.fixture(scope="module")
def digits():
    return dal.datasets.digits()


def test_digits_has_fixed_stratified_holdout(digits):
    again = dal.datasets.digits()
    assert len(digits) + len(digits.X_eval) == 1797
    assert len(digits.X_eval) == 359
    np.testing.assert_array_equal(digits.ids, again.ids)
    assert digits.fingerprint == again.fingerprint
    counts = np.bincount(digits.y_eval, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    assert set(digits.ids.tolist()).isdisjoint(digits.eval_ids.tolist())
    assert digits.X.shape[1:] == (1, 8, 8) and digits.X.dtype == np.float32
    assert 0.0 <= digits.X.min() and digits.X.max() <= 1.0
    assert digits.classes == tuple(str(i) for i in range(10))


def test_digits_ids_are_rows_of_load_digits(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    pos = digits.positions([digits.ids[7]])[0]
    np.testing.assert_allclose(digits.X[pos, 0] * 16, raw.images[digits.ids[7]])
    assert digits.targets[pos] == raw.target[digits.ids[7]]


def test_render_image_is_png(digits):
    png = digits.render(digits.ids[0])
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (64, 64)
    assert digits.render(digits.ids[0], size=16)[:8] == b"\x89PNG\r\n\x1a\n"


def test_positions_vectorized_and_unknown_ids(digits):
    ids = digits.ids[[5, 0, 100]]
    np.testing.assert_array_equal(digits.positions(ids), [5, 0, 100])
    with pytest.raises(KeyError, match="unknown sample id"):
        digits.positions([10**9])
    with pytest.raises(KeyError, match="ints"):
        digits.positions(["a"])


def test_ids_survive_reordering():
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    ids = [f"s{i}" for i in range(20)]
    a = dal.datasets.from_arrays(X, y=np.arange(20) % 2, ids=ids)
    perm = np.random.default_rng(0).permutation(20)
    b = dal.datasets.from_arrays(X[perm], y=(np.arange(20) % 2)[perm], ids=[ids[i] for i in perm])
    for sid in ("s3", "s17"):
        np.testing.assert_array_equal(a.X[a.positions([sid])], b.X[b.positions([sid])])


def test_from_arrays_classes_inferred_once_and_given():
    ds = dal.datasets.from_arrays(np.zeros((6, 3)), y=["b", "a", "b", "c", "a", "c"])
    assert ds.classes == ("a", "b", "c")
    np.testing.assert_array_equal(ds.targets, [1, 0, 1, 2, 0, 2])
    given = dal.datasets.from_arrays(np.zeros((3, 2)), classes=["x", "y", "z", "unused"])
    assert given.targets is None and given.n_classes == 4
    idx = dal.datasets.from_arrays(np.zeros((3, 2)), y=[0, 2, 1], classes=["cat", "dog", "eel"])
    np.testing.assert_array_equal(idx.targets, [0, 2, 1])


def test_from_arrays_holdout_forms():
    X = np.random.default_rng(0).normal(size=(100, 4))
    y = np.arange(100) % 4
    frac = dal.datasets.from_arrays(X, y, holdout=0.2)
    assert len(frac) == 80 and len(frac.X_eval) == 20
    assert np.bincount(frac.y_eval).tolist() == [5, 5, 5, 5]
    count = dal.datasets.from_arrays(X, y, holdout=10)
    assert len(count.X_eval) == 10
    pair = dal.datasets.from_arrays(X, y, holdout=(X[:7], y[:7]))
    assert len(pair) == 100 and len(pair.X_eval) == 7 and pair.has_holdout


def test_from_arrays_image_layouts():
    hw = dal.datasets.from_arrays(np.zeros((4, 10, 12), dtype=np.uint8), y=[0, 1, 0, 1])
    assert hw.kind == "image" and hw.X.shape == (4, 1, 10, 12)
    hwc = dal.datasets.from_arrays(np.full((4, 10, 12, 3), 255, dtype=np.uint8), y=[0, 1, 0, 1])
    assert hwc.X.shape == (4, 3, 10, 12) and hwc.X.max() == 1.0
    assert Image.open(io.BytesIO(hwc.render(2))).mode == "RGB"


def test_tabular_render_uses_columns():
    ds = dal.datasets.from_arrays(
        np.array([[1.5, 2.0]]), classes=["a", "b"], columns=["height", "weight"]
    )
    assert ds.render(0) == {"height": 1.5, "weight": 2.0}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"X": np.array([[1.0, np.nan]]), "y": [0]}, ValueError, "'X'.*NaN"),
        ({"X": np.array([[1.0, np.inf]]), "y": [0]}, ValueError, "finite"),
        ({"X": np.zeros((0, 3)), "y": []}, ValueError, "at least 1 row"),
        ({"X": np.zeros((3, 2)), "y": [0, 1]}, ValueError, "one label per sample"),
        ({"X": np.zeros((3, 2))}, ValueError, "needs the class list"),
        (
            {"X": np.zeros((2, 2)), "y": ["a", "q"], "classes": ["a", "b"]},
            ValueError,
            "outside 'classes'.*'q'",
        ),
        ({"X": np.zeros((2, 2)), "y": [0, 1], "classes": ["a", "a"]}, ValueError, "unique names"),
        ({"X": np.zeros((2, 2)), "y": [0, 1], "ids": [1, 1]}, ValueError, "duplicates"),
        ({"X": np.zeros((2, 2)), "y": [0, 1], "ids": [1, "b"]}, TypeError, "all ints or all strs"),
        ({"X": np.zeros((2, 2)), "y": [0, 1], "ids": [1]}, ValueError, "one id per sample"),
        ({"X": np.array([["a", "b"]], dtype=object), "y": [0]}, TypeError, "numeric"),
        ({"X": np.zeros((2, 2)), "y": [0.5, 1.0]}, TypeError, "class labels"),
        ({"X": np.zeros((2, 2)), "y": [0, 1], "kind": "video"}, ValueError, "'kind'"),
        ({"X": np.zeros((4, 2)), "y": [0, 1, 0, 1], "holdout": 1.5}, ValueError, "'holdout'"),
        (
            {"X": np.zeros((4, 2)), "classes": ["a"], "holdout": 0.5},
            ValueError,
            "'y' must be given",
        ),
        ({"X": np.zeros((5,)), "y": [0] * 5}, ValueError, "dimensions"),
        # (N, 0): nothing to learn from (it used to fail later, inside a fit).
        ({"X": np.zeros((4, 0)), "y": [0, 1, 0, 1]}, ValueError, "'X'.*at least one feature"),
        ({"X": np.zeros((4, 1, 0, 8)), "y": [0, 1, 0, 1]}, ValueError, "at least one feature"),
    ],
)
def test_from_arrays_bad_input_names_the_parameter(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dal.datasets.from_arrays(**kwargs)


def test_texts_default_featurizer_and_escaping_left_to_views():
    docs = ["the cat sat", "a dog ran", "<script>alert(1)</script> cat", "dogs and cats"] * 5
    ds = dal.datasets.texts(docs, y=["cat", "dog", "cat", "dog"] * 5, holdout=4)
    assert ds.kind == "text" and len(ds) == 16 and len(ds.X_eval) == 4
    assert ds.X.dtype == np.float32 and np.isfinite(ds.X).all() and ds.X.shape[1] >= 2
    sid = ds.ids[ds.texts.index("<script>alert(1)</script> cat")]
    assert ds.render(sid) == "<script>alert(1)</script> cat"  # raw: escaping happens in the view


def test_texts_bad_utf8_and_types():
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid UTF-8"):
        dal.datasets.texts(["ok", b"\xff\xfe bad"], classes=["a"])
    with pytest.raises(TypeError, match="list of str"):
        dal.datasets.texts("just one string", classes=["a"])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        dal.datasets.texts([3], classes=["a"])
    decoded = dal.datasets.texts(["ok", "caf\u00e9".encode()], classes=["a"])
    assert decoded.texts[1] == "caf\u00e9"


def _write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_local_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % 10
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gz)
    ds = dal.datasets.mnist(tmp_path, holdout=10)
    assert len(ds) == 20 and len(ds.X_eval) == 10 and ds.X.shape[1:] == (1, 28, 28)
    pos = ds.positions([ds.ids[0]])[0]
    np.testing.assert_allclose(ds.X[pos, 0] * 255, images[ds.ids[0]], atol=1e-3)


def test_mnist_missing_files_lists_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz.*never downloads"):
        dal.datasets.mnist(tmp_path)


def test_mnist_checks_sha256sums(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(4), True)
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  t10k-images-idx3-ubyte.gz\n")
    with pytest.raises(ValueError, match="does not match SHA256SUMS"):
        dal.datasets.mnist(tmp_path)


def _make_folder(root, broken=False):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )
    if broken:
        (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")


def test_image_folder_layout_and_ids(tmp_path):
    _make_folder(tmp_path)
    ds = dal.datasets.image_folder(tmp_path, size=16)
    assert ds.classes == ("cat", "dog") and len(ds) == 6
    assert ds.X.shape == (6, 3, 16, 16)
    assert "dog/2.png" in ds.ids.tolist()
    assert ds.targets[ds.positions(["dog/2.png"])[0]] == 1
    png = Image.open(io.BytesIO(ds.render("cat/0.png", size=48)))
    assert png.size == (48, 40)  # thumbnails come from the original file, aspect kept


def test_image_folders_and_files_are_lazy_until_pixels_are_read(tmp_path):
    _make_folder(tmp_path)
    ds = dal.datasets.image_folder(tmp_path, size=16, holdout=2)
    assert ds.lazy and ds.input_shape == (3, 16, 16) and len(ds) == 4 and ds.n_eval == 2
    ds.fingerprint, ds.render(ds.ids[0]), ds.positions(ds.ids[:2])  # none reads the pixels
    assert ds.lazy
    assert ds.X.shape == (4, 3, 16, 16) and not ds.lazy  # the from-scratch model reads them
    assert ds.X_eval.shape == (2, 3, 16, 16)
    eager = dal.datasets.image_folder(tmp_path, size=16, holdout=2)
    assert eager.fingerprint == ds.fingerprint


def test_image_files_with_and_without_labels(tmp_path):
    _make_folder(tmp_path, broken=True)
    paths = sorted(str(p) for p in tmp_path.rglob("*.*"))
    labels = ["dog" if "/dog/" in p else "cat" for p in paths]
    with pytest.warns(DalWarning, match=r"skipped 1 unreadable image file\(s\): .*bad.jpg"):
        ds = dal.datasets.image_files(paths, labels, size=8)
    assert ds.lazy and len(ds) == 6 and ds.classes == ("cat", "dog")
    assert ds.ids.tolist() == [p for p in paths if not p.endswith("bad.jpg")]
    assert [ds.classes[t] for t in ds.targets] == [
        lab for p, lab in zip(paths, labels) if "bad" not in p
    ]
    pool = dal.datasets.image_files(paths[:3], classes=["cat", "dog"], ids=[7, 8, 9], size=8)
    assert pool.targets is None and pool.ids.tolist() == [7, 8, 9]
    assert pool.X.shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="could not read image .*bad.jpg"):
        dal.datasets.image_files(paths, labels, on_error="raise")
    with pytest.raises(FileNotFoundError, match="existing files.*missing.png"):
        dal.datasets.image_files([str(tmp_path / "missing.png")], classes=["a"])
    with pytest.raises(TypeError, match="'paths' parameter of datasets.image_files"):
        dal.datasets.image_files(str(tmp_path), classes=["a"])
    with pytest.raises(ValueError, match="one label per sample"):
        dal.datasets.image_files(paths[:2], ["cat"])


def test_image_folder_unreadable_files_warn_or_raise(tmp_path):
    _make_folder(tmp_path, broken=True)
    with pytest.warns(DalWarning, match=r"skipped 1 unreadable image file\(s\): dog/bad.jpg"):
        ds = dal.datasets.image_folder(tmp_path, size=8)
    assert len(ds) == 6
    with pytest.raises(ValueError, match="could not read image .*bad.jpg"):
        dal.datasets.image_folder(tmp_path, size=8, on_error="raise")


def test_image_folder_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="existing folder"):
        dal.datasets.image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no class folders"):
        dal.datasets.image_folder(tmp_path)


def test_fingerprint_depends_on_content():
    X = np.random.default_rng(0).normal(size=(10, 3))
    a = dal.datasets.from_arrays(X, classes=["a", "b"])
    b = dal.datasets.from_arrays(X + 1, classes=["a", "b"])
    c = dal.datasets.from_arrays(X.copy(), classes=["a", "b"])
    assert a.fingerprint != b.fingerprint and a.fingerprint == c.fingerprint


def test_multi_label_datasets():
    X = np.zeros((6, 2))
    ds = dal.datasets.from_arrays(X, y=[["b"], ["a", "b"], [], ["c"], ["a"], ["b", "c"]])
    assert ds.multi_label and ds.classes == ("a", "b", "c")
    np.testing.assert_array_equal(ds.targets[1], [1, 1, 0])
    assert ds.targets[2].sum() == 0
    hot = dal.datasets.from_arrays(X, y=ds.targets, classes=["x", "y", "z"])
    assert hot.multi_label and hot.targets.shape == (6, 3)
    with pytest.raises(ValueError, match="outside 'classes' in row 0"):
        dal.datasets.from_arrays(X, y=[["q"]] * 6, classes=["a"])
    with pytest.raises(ValueError, match="0/1 matrix"):
        dal.datasets.from_arrays(X, y=np.full((6, 3), 2), classes=["x", "y", "z"])
    split = dal.datasets.from_arrays(
        np.zeros((40, 2)), y=[["a"], ["b"], ["a", "b"], []] * 10, holdout=0.25
    )
    assert split.y_eval.shape == (10, 2) and len(split) == 30


@pytest.mark.parametrize("ids", [[2**70], [-(2**70)], [2**63, -1], [np.uint64(2**64 - 1)]])
def test_positions_ids_beyond_int64_are_unknown_ids(ids):
    ds = dal.datasets.from_arrays(np.zeros((3, 2)), classes=["a"], ids=[-1, 0, 5])
    with pytest.raises(KeyError, match="'ids'.*unknown sample id"):
        ds.positions(ids)


def test_positions_uint64_ids_do_not_wrap_around():
    ds = dal.datasets.from_arrays(np.zeros((3, 2)), classes=["a"], ids=[-1, 0, 5])
    huge = np.array([2**63, 2**64 - 1], dtype=np.uint64)  # 2**64 - 1 is -1 when cast to int64
    with pytest.raises(KeyError, match="'ids'.*unknown sample id"):
        ds.positions(huge)
    with pytest.raises(KeyError, match="'ids'.*unknown sample id"):
        ds.positions(np.array([5, 2**64 - 1], dtype=np.uint64))
    np.testing.assert_array_equal(ds.positions(np.array([5, 0], dtype=np.uint64)), [2, 1])
    with pytest.raises(KeyError, match="'ids'.*unknown sample id"):
        ds.render(2**70)


@pytest.mark.parametrize("ids", [[2**70, 1], np.array([2**63, 1], dtype=np.uint64)])
def test_ids_beyond_int64_are_rejected_when_building(ids):
    with pytest.raises(ValueError, match="'ids'.*int64"):
        dal.datasets.from_arrays(np.zeros((2, 2)), classes=["a"], ids=ids)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-5, ValueError), (2.5, TypeError)])
def test_texts_n_components_is_checked(value, exc):
    with pytest.raises(exc, match=r"'n_components' parameter of datasets.texts.*\[1, inf\]"):
        dal.datasets.texts(["a b", "c d", "e f"], classes=["x"], n_components=value)


def test_texts_n_components_one_gives_one_dimension():
    docs = ["the cat sat", "a dog ran", "dogs and cats", "a cat ran"] * 3
    assert dal.datasets.texts(docs, classes=["x"], n_components=1).X.shape == (12, 1)


def _bomb_folder(root):
    _make_folder(root)  # six 20 x 24 images
    Image.fromarray(np.zeros((100, 100, 3), dtype=np.uint8)).save(root / "dog" / "huge.png")


def test_image_folder_skips_decompression_bombs(tmp_path, monkeypatch):
    _bomb_folder(tmp_path)
    # 10,000 pixels > 2 x 1,000: Pillow raises DecompressionBombError (the 480-pixel ones load).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.warns(DalWarning, match=r"skipped 1 unreadable image file\(s\): dog/huge.png"):
        ds = dal.datasets.image_folder(tmp_path, size=8)
    assert len(ds) == 6 and "dog/huge.png" not in ds.ids.tolist()
    with pytest.raises(ValueError, match="could not read image .*huge.png"):
        dal.datasets.image_folder(tmp_path, size=8, on_error="raise")


def test_image_folder_reads_big_jpegs_in_draft_mode(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    (tmp_path / "a").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (800, 640, 3), dtype=np.uint8)).save(
        tmp_path / "a" / "big.jpg"
    )
    decoded = []
    original = JpegImagePlugin.JpegImageFile.load

    def load(self):
        decoded.append(self.size)  # the size actually decoded (after draft)
        return original(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    ds = dal.datasets.image_folder(tmp_path, size=16)
    assert ds.X.shape == (1, 3, 16, 16)
    assert decoded and max(decoded[0]) <= 800 // 8  # 1/8 scale: a fraction of the memory
    decoded.clear()
    png = Image.open(io.BytesIO(ds.render("a/big.jpg")))
    assert png.size == (102, 128) and decoded and max(decoded[0]) <= 800 // 4


def test_render_caches_thumbnails(tmp_path, monkeypatch):
    _make_folder(tmp_path)
    ds = dal.datasets.image_folder(tmp_path, size=8)
    opened = []
    original = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    first = ds.render("cat/0.png")
    assert ds.render("cat/0.png") == first and len(opened) == 1  # decoded once
    ds.render("cat/0.png", size=32)  # another size is another thumbnail
    assert len(opened) == 2
    for i in range(3):
        ds.render(f"dog/{i}.png")
    assert len(opened) == 5
    import pickle  # the cache (and its lock) does not travel with a pickled dataset

    assert pickle.loads(pickle.dumps(ds)).render("cat/0.png") == first
