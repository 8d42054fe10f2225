from __future__ import annotations

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
    files = sorted(f.name for f in (tmp_path / "p.db.maps").iterdir())
    assert any("embeddings-v1-pca" in f for f in files) and any(
        "features-v0-pca" in f for f in files
    )
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
