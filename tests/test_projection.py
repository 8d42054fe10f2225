from __future__ import annotations

import os

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.projection import Projector, align, pca_2d, umap_2d
from dal_widgets.training import TrainConfig


def blobs(n=300, d=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.normal(size=(n, d)) * 0.3
    X[:, 0] += y * 5
    return X.astype(np.float32), y


def test_pca_2d_finds_the_main_axis_and_is_stable():
    X, _y = blobs()
    c = pca_2d(X)
    assert c.shape == (300, 2) and c.dtype == np.float32
    assert abs(np.corrcoef(c[:, 0], X[:, 0])[0, 1]) > 0.99
    np.testing.assert_array_equal(c, pca_2d(X))
    sub = pca_2d(X, sample=50)  # fitted on a subsample, applied to all
    assert sub.shape == (300, 2) and abs(np.corrcoef(sub[:, 0], X[:, 0])[0, 1]) > 0.98
    one = pca_2d(X[:, :1])
    assert one.shape == (300, 2) and np.all(one[:, 1] == 0)


def test_align_undoes_rotation_scale_and_shift():
    rng = np.random.default_rng(1)
    old = rng.normal(size=(100, 2))
    theta = 1.1
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    new = (old @ rot) * 3.0 + np.array([5.0, -2.0])
    np.testing.assert_allclose(align(new, old), old, atol=1e-5)
    mirrored = old * np.array([-1.0, 1.0])
    np.testing.assert_allclose(align(mirrored, old), old, atol=1e-5)


@pytest.mark.slow
def test_umap_2d_separates_clusters_is_seeded_and_transforms_the_rest():
    X, y = blobs(n=400)
    a = umap_2d(X, seed=0, sample=200)  # 200 fitted, 200 transformed
    b = umap_2d(X, seed=0, sample=200)
    np.testing.assert_array_equal(a, b)
    centers = np.array([a[y == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(a[y == k] - centers[k], axis=1).mean() for k in range(3))
    gaps = min(np.linalg.norm(centers[i] - centers[j]) for i in range(3) for j in range(i + 1, 3))
    assert gaps > 3 * spread


def test_projector_first_paint_cache_and_refresh(tmp_path):
    X, y = blobs()
    ds = dal.datasets.from_arrays(X, y=y, holdout=0.2)
    s = dal.Session(
        ds,
        store=str(tmp_path / "p.db"),
        device="cpu",
        retrain="manual",
        train_config=TrainConfig(steps=20),
    )
    p = Projector(s, method="pca")
    first = p.current()
    assert first.method == "pca" and first.source == "features" and first.coords.shape == (240, 2)
    seen = []
    p.on_change(seen.append)
    ids = ds.ids[:30].tolist()
    s.label(ids, ds.targets[:30])
    s.train(block=True)
    p.refresh(block=True)
    assert p.error is None and seen[-1].source == "embeddings" and seen[-1].model_version == 1
    assert seen[-1].model_key == s.model_version.key
    # Maps live in the store's side folder, keyed by what identifies the model (its weights).
    assert s.store.side_dir == tmp_path / "p.db.dal"
    files = sorted(f.name for f in (tmp_path / "p.db.dal" / "maps").iterdir())
    assert any(f"embeddings-{s.model_version.key}-pca" in f for f in files), files
    assert any("features-pca" in f for f in files), files
    assert not (tmp_path / "p.db.maps").exists()
    s.close()
    # A new kernel: the cached map of the newest state shows at once.
    s2 = dal.Session(ds, store=str(tmp_path / "p.db"), device="cpu", retrain="manual")
    p2 = Projector(s2, method="pca", source="features")
    assert p2.status == "pca (cached)"
    np.testing.assert_array_equal(p2.current().coords, first.coords)
    s2.close()


def test_projector_bad_arguments():
    X, y = blobs(30)
    s = dal.Session(dal.datasets.from_arrays(X, y=y), store=None, device="cpu")
    with pytest.raises(ValueError, match="'method'"):
        Projector(s, method="tsne")
    with pytest.raises(ValueError, match="'source'"):
        Projector(s, source="labels")


def test_place_on_anchors_keeps_anchors_and_follows_new_neighbours():
    from dal_widgets.projection import place_on_anchors

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5)).astype(np.float32)
    old = rng.normal(size=(600, 2)).astype(np.float32)
    anchors = np.arange(0, 600, 3)
    out = place_on_anchors(X, anchors, old[anchors], k=5)
    np.testing.assert_allclose(out[anchors], old[anchors], atol=1e-3)  # anchors stay put
    # a non-anchor lands inside the hull of its nearest anchors' old positions
    i = 1
    d = ((X[anchors] - X[i]) ** 2).sum(1)
    near = old[anchors][np.argsort(d)[:5]]
    assert near[:, 0].min() - 1e-6 <= out[i, 0] <= near[:, 0].max() + 1e-6
    np.testing.assert_allclose(
        place_on_anchors(X, anchors, old[anchors], k=5, chunk=7), out, atol=1e-5
    )


def test_projector_refreshes_on_anchors_between_refits(tmp_path, monkeypatch):
    import dal_widgets.projection as projection

    calls = []

    def fake_umap(X, *, sample, seed, init=None, **kw):  # PCA stands in for UMAP's cost here
        calls.append("refit")
        return pca_2d(X, seed=seed)

    monkeypatch.setattr(projection, "umap_2d", fake_umap)
    X, y = blobs()
    ds = dal.datasets.from_arrays(X, y=y, holdout=0.2)
    s = dal.Session(
        ds, store=None, device="cpu", retrain="manual", train_config=TrainConfig(steps=20)
    )
    p = Projector(s, method="umap", refit_every=3)
    p.refresh(block=True)  # no model: UMAP of the raw features
    sources = []
    for k in range(5):
        ids = ds.ids[k * 20 : (k + 1) * 20].tolist()
        s.label(ids, ds.targets[k * 20 : (k + 1) * 20])
        s.train(block=True)
        before = len(calls)
        p.refresh(block=True)
        sources.append("refit" if len(calls) > before else "refresh")
        assert p.error is None and p.current().model_version == k + 1
    assert sources == ["refit", "refresh", "refresh", "refit", "refresh"]
    s.close()


def _file_session(tmp_path, ds, **kw):
    return dal.Session(
        ds,
        store=str(tmp_path / "p.db"),
        device="cpu",
        retrain="manual",
        train_config=TrainConfig(steps=20),
        **kw,
    )


def test_a_new_kernel_s_model_v1_does_not_get_the_old_kernel_s_v1_map(tmp_path):
    X, y = blobs()
    ds = dal.datasets.from_arrays(X, y=y, holdout=0.2)
    s1 = _file_session(tmp_path, ds)
    s1.label(ds.ids[:30].tolist(), ds.targets[:30])
    s1.train(block=True)
    p1 = Projector(s1, method="pca")
    p1.refresh(block=True)
    old, old_key = p1.current(), s1.model_version.key
    assert p1.error is None and old.source == "embeddings" and old.model_version == 1
    s1.close()
    # Another kernel on the same store: versions restart at 1, and its v1 is another model
    # (without the saved model, which a new kernel would load as its v1).
    (tmp_path / "p.db.dal" / "model.pt").unlink()
    s2 = _file_session(tmp_path, ds)
    s2.label(ds.ids[30:60].tolist(), ds.targets[30:60])
    s2.train(block=True)
    assert s2.model_version.version == 1 and s2.model_version.key != old_key
    p2 = Projector(s2, method="pca")
    assert p2.status != "pca (cached)"  # nothing cached for this model yet
    p2.refresh(block=True)
    new = p2.current()
    assert p2.error is None and p2.status == "pca" and new.model_key == s2.model_version.key
    assert not np.allclose(new.coords, old.coords, atol=1e-3)
    maps = list((tmp_path / "p.db.dal" / "maps").glob("*-embeddings-*-pca.npy"))
    assert len(maps) == 2  # one map per model, none overwritten
    s2.close()


def _npy_bytes(array, **kw):
    import io

    buf = io.BytesIO()
    np.save(buf, array, **kw)
    return buf.getvalue()


def _npz_bytes(n):
    import io

    buf = io.BytesIO()
    np.savez(buf, coords=np.zeros((n, 2), np.float32))
    return buf.getvalue()


CORRUPT_CACHES = {
    "empty (power cut)": lambda n: b"",
    "truncated": lambda n: _npy_bytes(np.zeros((n, 2), np.float32))[:200],
    "not numpy": lambda n: b"hello, world",
    "npz": _npz_bytes,
    "strings": lambda n: _npy_bytes(np.full((n, 2), "x")),
    "structured": lambda n: _npy_bytes(np.zeros(n, dtype=[("a", "f4"), ("b", "f4")])),
    "structured (n, 2)": lambda n: _npy_bytes(np.zeros((n, 2), dtype=[("a", "f4")])),
    "objects": lambda n: _npy_bytes(np.full((n, 2), None, dtype=object), allow_pickle=True),
    "wrong shape": lambda n: _npy_bytes(np.zeros((n, 3), np.float32)),
    "too few rows": lambda n: _npy_bytes(np.zeros((n - 1, 2), np.float32)),
    "NaN": lambda n: _npy_bytes(np.full((n, 2), np.nan, np.float32)),
    "infinite": lambda n: _npy_bytes(np.full((n, 2), np.inf, np.float64)),
    "complex": lambda n: _npy_bytes(np.zeros((n, 2), np.complex64)),
}


@pytest.mark.parametrize("corruption", list(CORRUPT_CACHES))
def test_a_corrupt_map_cache_is_a_miss_and_is_rewritten(tmp_path, monkeypatch, corruption):
    X, y = blobs(60)
    ds = dal.datasets.from_arrays(X, y=y)
    s = _file_session(tmp_path, ds)
    first = Projector(s, method="pca").current()
    (path,) = (tmp_path / "p.db.dal" / "maps").glob("*-features-pca.npy")
    path.write_bytes(CORRUPT_CACHES[corruption](len(ds)))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    p = Projector(s, method="pca")  # what dal.App(session) does first
    assert p.status == "pca" and p.error is None  # recomputed, not "(cached)"
    np.testing.assert_allclose(p.current().coords, first.coords, atol=1e-5)
    # The bad file was replaced by a good one, written durably (tmp file, fsync, rename).
    assert synced
    np.testing.assert_allclose(np.load(path), first.coords, atol=1e-5)
    assert [f.name for f in path.parent.iterdir()] == [path.name]  # no tmp file left behind
    assert Projector(s, method="pca").status == "pca (cached)"
    s.close()


@pytest.mark.parametrize("xdg", ["", "relative/cache", "ABS"])
def test_numba_cache_ignores_empty_or_relative_xdg_cache_home(tmp_path, monkeypatch, xdg):
    from dal_widgets import projection

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NUMBA_CACHE_DIR", "restored-after-the-test")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    if xdg == "ABS":
        xdg = str(tmp_path / "xdg")
    monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    projection.configure_numba_cache()
    # The XDG spec: an empty or relative XDG_CACHE_HOME is ignored (~/.cache is used).
    base = tmp_path / "xdg" if xdg.startswith("/") else home / ".cache"
    assert os.environ["NUMBA_CACHE_DIR"] == str(base / "dal_widgets" / "numba")
    assert (base / "dal_widgets" / "numba").is_dir()
    assert list(cwd.iterdir()) == []  # nothing written in the current folder
