from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from dal_widgets import strategies
from dal_widgets.training import (
    MLP,
    Callback,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    EarlyStopping,
    SmallCNN,
    Standardize,
    TrainConfig,
    classifier_layer,
    default_model,
    fit,
    has_dropout,
    load_checkpoint,
    predict,
    resolve_device,
    save_checkpoint,
)


def toy(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()
    return X, y


def test_default_model_sizes_from_data():
    assert isinstance(default_model((1, 8, 8), 10, "image"), MLP)
    assert isinstance(default_model((1, 28, 28), 10, "image"), SmallCNN)
    assert isinstance(default_model((20,), 3, "tabular"), MLP)
    cnn = default_model((3, 32, 32), 5, "image")
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 5) and has_dropout(cnn)


def test_fit_learns_and_counts_steps():
    X, y = toy()
    model = MLP(4, 2)
    res = fit(model, X, y, config=TrainConfig(steps=200, batch_size=32))
    assert res.steps == 4 * 50 and res.epochs == 50 and not res.cancelled
    assert (model(X).argmax(1) == y).float().mean() > 0.9


def test_callbacks_see_every_hook_and_can_stop():
    calls = []

    class Recorder(Callback):
        def on_fit_begin(self, state):
            calls.append("begin")

        def on_epoch_end(self, state):
            calls.append(("epoch", state.epoch))
            return state.epoch == 2  # stop after the third epoch

        def on_fit_end(self, state):
            calls.append("end")

    X, y = toy()
    res = fit(
        MLP(4, 2), X, y, config=TrainConfig(steps=1000, batch_size=60), callbacks=[Recorder()]
    )
    assert calls == ["begin", ("epoch", 0), ("epoch", 1), ("epoch", 2), "end"]
    assert res.steps == 6 and not res.cancelled


def test_an_epoch_is_cut_into_batches_of_equal_size():
    # 130 labels at batch_size 32: five batches of 26 per epoch, not 32, 32, 32, 32 and 2
    # (a 2-sample step is noisy and weighs as much as a full one).
    sizes = []

    class Sizes(Callback):
        def on_batch_end(self, state):
            sizes.append(state.samples_seen - sum(sizes))

    X, y = toy(130)
    res = fit(MLP(4, 2), X, y, config=TrainConfig(steps=10, batch_size=32), callbacks=[Sizes()])
    assert res.steps == 10 and sizes == [26] * 10
    sizes.clear()
    X, y = toy(100)  # 4 batches: 25 each
    fit(MLP(4, 2), X, y, config=TrainConfig(steps=4, batch_size=32), callbacks=[Sizes()])
    assert sizes == [25] * 4
    sizes.clear()
    X, y = toy(7)  # fewer labels than a batch: one batch of all
    fit(MLP(4, 2), X, y, config=TrainConfig(steps=3, batch_size=32), callbacks=[Sizes()])
    assert sizes == [7] * 3


def test_stop_event_cancels():
    X, y = toy()
    ev = threading.Event()

    class SetAfter(Callback):
        def on_batch_end(self, state):
            if state.step == 5:
                ev.set()

    res = fit(
        MLP(4, 2), X, y, config=TrainConfig(steps=1000), callbacks=[SetAfter()], stop_event=ev
    )
    assert res.cancelled and res.steps == 5


def test_early_stopping_restores_best_weights():
    X, y = toy()
    Xv, yv = toy(60, seed=1)
    es = EarlyStopping(Xv, yv, patience=3)
    model = MLP(4, 2)
    fit(model, X, y, config=TrainConfig(steps=2000, batch_size=120), callbacks=[es])
    with torch.no_grad():
        acc = float((model.eval()(Xv).argmax(1) == yv).float().mean())
    assert acc == pytest.approx(es.best) and es.best > 0.8


def test_fit_is_reproducible_and_leaves_global_rng_alone():
    X, y = toy()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        m = MLP(4, 2)
        fit(m, X, y, config=TrainConfig(steps=30), seed=5)
        states.append(m.state_dict())
    torch.manual_seed(123)
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k])
    assert torch.equal(torch.rand(1), before)


def test_predict_one_pass_shapes_and_embeddings():
    torch.manual_seed(0)
    model = MLP(4, 3, hidden=(16, 8))
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    out = predict(model, X, {"probs", "embeddings", "mc_probs"}, batch_size=16, mc_samples=5)
    assert out["probs"].shape == (50, 3) and np.allclose(out["probs"].sum(1), 1, atol=1e-5)
    assert out["embeddings"].shape == (50, 8)
    assert out["mc_probs"].shape == (50, 5, 3)
    with torch.no_grad():
        emb = model.features(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(out["embeddings"], emb, atol=1e-5)
    again = predict(model, X, {"mc_probs"}, batch_size=16, mc_samples=5)
    np.testing.assert_array_equal(out["mc_probs"], again["mc_probs"])  # seeded masks


def test_mc_dropout_is_consistent_across_samples_and_chunks():
    torch.manual_seed(0)
    model = MLP(4, 3, hidden=(16, 8))
    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    X[10] = X[3]  # a duplicate gets the same T predictions (one sub-network per pass)
    a = predict(model, X, {"mc_probs"}, batch_size=7, mc_samples=6)["mc_probs"]
    assert a.std(axis=1).max() > 1e-3  # the passes do differ, by far more than rounding
    # Equal up to float rounding only: BLAS may pick other kernels for other matrix shapes or
    # rows (seen on Intel Xeon: 6e-8). Another mask would move values by about 1e-3 or more.
    np.testing.assert_allclose(a[10], a[3], rtol=0, atol=1e-6)
    b = predict(model, X, {"mc_probs"}, batch_size=40, mc_samples=6)["mc_probs"]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # chunking does not change the masks
    c = predict(model, X, {"mc_probs"}, batch_size=40, mc_samples=6, seed=1)["mc_probs"]
    assert np.abs(a - c).max() > 1e-3  # another seed: other masks


class _NoSplit(nn.Module):
    """The same layers as a SmallCNN, without ``mc_split`` (every MC pass runs everything)."""

    def __init__(self, inner):
        super().__init__()
        self.features, self.classifier = inner.features, inner.classifier

    def forward(self, x):
        return self.classifier(self.features(x))


def test_mc_split_runs_the_convolutions_once_and_changes_no_number():
    torch.manual_seed(0)
    cnn = SmallCNN(1, 4)
    X = np.random.default_rng(0).random((30, 1, 28, 28), dtype=np.float32)
    calls = []
    cnn.features[0].register_forward_hook(lambda *a: calls.append(1))
    split = predict(cnn, X, {"mc_probs"}, batch_size=16, mc_samples=5)["mc_probs"]
    assert len(calls) == 2  # one per chunk, not one per chunk and pass
    whole = predict(_NoSplit(cnn), X, {"mc_probs"}, batch_size=16, mc_samples=5)["mc_probs"]
    assert len(calls) == 2 + 2 * 5
    np.testing.assert_allclose(split, whole, atol=1e-6)
    assert split.std(axis=1).max() > 1e-4
    prefix, rest = cnn.mc_split()
    assert not has_dropout(prefix) and has_dropout(rest)


def test_affine_augment_moves_images_a_little_and_is_seeded():
    from dal_widgets.training import affine_augment

    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    a = affine_augment(x, torch.Generator().manual_seed(0))
    b = affine_augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    moved = (a - x).abs().flatten(1).sum(1)
    assert (moved > 0.5).float().mean() > 0.9  # nearly every image changed
    # ... but only a little: the square's mass stays (scale 0.9-1.1) and its centre within 3 px.
    mass = a.flatten(1).sum(1)
    assert ((mass > 64 * 0.75) & (mass < 64 * 1.3)).all()
    grid = torch.arange(28.0)
    cy = (a[:, 0].sum(2) * grid).sum(1) / a[:, 0].sum((1, 2))
    cx = (a[:, 0].sum(1) * grid).sum(1) / a[:, 0].sum((1, 2))
    assert ((cy - 13.5).abs() < 3).all() and ((cx - 13.5).abs() < 3).all()


def test_fit_augments_images_only_when_asked_or_auto():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16 * 16, 2)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.lin(x.flatten(1))

    X = torch.rand(8, 1, 16, 16)
    y = torch.tensor([0, 1] * 4)
    for augment, changed in [("auto", True), ("off", False), ("affine", True)]:
        seen.clear()
        fit(Spy(), X, y, config=TrainConfig(steps=1, batch_size=8, augment=augment))
        same = any(torch.equal(seen[0][i], X[j]) for i in range(8) for j in range(8))
        assert same is not changed, augment
    seen.clear()  # tabular rows are never augmented under "auto"
    fit(MLP(4, 2), *toy(8), config=TrainConfig(steps=1, augment="auto"))


def test_mc_passes_keep_batchnorm_in_eval_mode():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)
    )
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    predict(model, np.zeros((6, 4), np.float32), {"mc_probs"}, mc_samples=3)
    assert seen and not any(seen)
    assert not model[3].training  # dropout back in eval mode afterwards


def test_classifier_layer_protocol():
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    assert classifier_layer(seq) is seq[2]
    with pytest.raises(ValueError, match="classifier"):
        classifier_layer(nn.Sequential(nn.ReLU()))


def test_predict_refuses_unknown_arrays():
    with pytest.raises(ValueError, match="cannot compute"):
        predict(MLP(2, 2), np.zeros((2, 2), np.float32), {"gradients"})


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="'device'"):
        resolve_device("quantum")
    with pytest.raises(TypeError, match="'device'"):
        resolve_device(3.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_train_config_validation():
    with pytest.raises(ValueError, match="'lr'"):
        TrainConfig(lr=0).validated()
    with pytest.raises(TypeError, match="'batch_size'"):
        TrainConfig(batch_size=2.5).validated()
    assert TrainConfig().with_(steps=7).steps == 7
    with pytest.raises(ValueError, match="'augment'.*'auto', 'affine' or 'off'.*'yes'"):
        TrainConfig(augment="yes").validated()
    with pytest.raises(ValueError, match="'pseudo_labels'"):
        TrainConfig(pseudo_labels=1.0).validated()
    with pytest.raises(ValueError, match="'pseudo_per_class'"):
        TrainConfig(pseudo_per_class=0).validated()


@pytest.mark.gpu
def test_fit_and_predict_on_cuda():
    X, y = toy()
    model = MLP(4, 2).cuda()
    fit(model, X.cuda(), y.cuda(), config=TrainConfig(steps=100))
    out = predict(model, X.numpy(), {"probs", "embeddings"}, device="cuda")
    assert out["probs"].shape == (120, 2)


def test_loss_head_learns_to_rank_losses():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 2)).astype(np.float32)
    y = ((X[:, 0] + 0.5 * rng.normal(size=600)) > 0).astype(np.int64)  # noisy near the boundary
    torch.manual_seed(0)
    model = MLP(2, 2, hidden=(32, 16), loss_head=True)
    fit(
        model,
        torch.as_tensor(X[:400]),
        torch.as_tensor(y[:400]),
        config=TrainConfig(steps=600, batch_size=64),
    )
    out = predict(model, X[400:], {"probs", "loss_pred"})
    true_loss = -np.log(out["probs"][np.arange(200), y[400:]] + 1e-12)
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    spearman = np.corrcoef(rank(out["loss_pred"]), rank(true_loss))[0, 1]
    assert spearman > 0.3, spearman


def test_loss_pred_needs_a_head():
    with pytest.raises(ValueError, match="loss-prediction head"):
        predict(MLP(2, 2), np.zeros((3, 2), np.float32), {"loss_pred"})


def test_deepfool_distance_tracks_the_distance_to_the_boundary():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(300, 2)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = MLP(2, 2, hidden=(32, 16))
    fit(model, torch.as_tensor(X), torch.as_tensor(y), config=TrainConfig(steps=400))
    d = predict(model, X, {"adv_dist"}, batch_size=64)["adv_dist"]
    assert d.shape == (300,) and np.all(d >= 0)
    assert np.corrcoef(np.abs(X[:, 0]), d)[0, 1] > 0.8
    near = np.argsort(d)[:10]  # the smallest distances belong to points near the boundary
    assert np.abs(X[near, 0]).mean() < np.abs(X[:, 0]).mean() / 3


# ------------------------------------------------------------------------------ checkpoints
def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_checkpoint_is_one_file_and_a_json_target_is_refused(tmp_path):
    # Defect: export_model("model.json") wrote the config over the weights, and m.pt and
    # m.pth shared m.json. The config now travels inside the one torch file.
    torch.manual_seed(0)
    a, b = MLP(2, 2), MLP(2, 2)
    save_checkpoint(tmp_path / "m.pt", a, {"n_labels": 1})
    save_checkpoint(tmp_path / "m.pth", b, {"n_labels": 2})
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "m.pth"]
    fresh = MLP(2, 2)
    assert load_checkpoint(tmp_path / "m.pt", fresh)["n_labels"] == 1 and _same_weights(fresh, a)
    assert load_checkpoint(tmp_path / "m.pth", fresh)["n_labels"] == 2 and _same_weights(fresh, b)
    torch.load(tmp_path / "m.pt", weights_only=True)  # tensors and plain data only
    with pytest.raises(
        ValueError, match=r"'path' parameter of save_checkpoint.*\.pt.*model\.json'"
    ):
        save_checkpoint(tmp_path / "model.json", a, {})
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "m.pth"]


def test_old_two_file_checkpoints_still_load(tmp_path):
    # Written as versions before the one-file format did: a state dict and a .json beside it.
    old = MLP(4, 2).eval()
    torch.save(old.state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps({"n_labels": 5, "classes": ["a", "b"]}))
    X, _ = unscaled_table()
    new = default_model((4,), 2, "tabular", inputs=X).eval()  # standardizes; the old one did not
    config = load_checkpoint(tmp_path / "m.pt", new, classes=["a", "b"])
    assert config["n_labels"] == 5
    x = torch.randn(8, 4)
    with torch.no_grad():  # the checkpoint knows no statistics: its Standardize is an identity
        torch.testing.assert_close(new(x), old(x))
    (tmp_path / "m.json").unlink()
    assert load_checkpoint(tmp_path / "m.pt", MLP(4, 2)) == {}


_CHILD_EXPORTING = """
import sys, torch
from dal_widgets.training import MLP, save_checkpoint
torch.manual_seed(0)
model = MLP(64, 10, hidden=(512, 256))
print("ready", flush=True)
i = 0
while True:
    save_checkpoint(sys.argv[1], model, {"n_labels": i, "classes": ["a", "b"]})
    i += 1
"""


@pytest.mark.slow
def test_killed_exports_leave_a_whole_checkpoint_or_none(tmp_path):
    # SIGKILL at random moments of an export loop: the target must load completely (weights
    # and config) or not exist, never be half written; killed exports' tmp files are cleaned
    # by the next export.
    target = tmp_path / "m.pt"
    torch.manual_seed(0)
    reference = MLP(64, 10, hidden=(512, 256))
    rng = np.random.default_rng(0)
    loaded = 0
    for _ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_EXPORTING, str(target)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        if target.exists():
            fresh = MLP(64, 10, hidden=(512, 256))
            config = load_checkpoint(target, fresh)
            assert config["classes"] == ["a", "b"] and config["n_labels"] >= 0
            assert _same_weights(fresh, reference)
            loaded += 1
    assert loaded >= 5  # most kills land after a first export, so the check means something
    save_checkpoint(target, reference, {"n_labels": 0})
    assert os.listdir(tmp_path) == ["m.pt"]


def test_export_into_a_missing_folder_or_onto_a_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "m.pt"
    with pytest.raises(
        ValueError, match=r"'path' parameter of save_checkpoint.*nope' does not exist"
    ):
        save_checkpoint(missing, MLP(2, 2), {})
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"'path' parameter of save_checkpoint.*a file.*folder"):
        save_checkpoint(tmp_path / "folder", MLP(2, 2), {})
    assert [p.name for p in tmp_path.rglob("*")] == ["folder"]  # no tmp files left


_CHILD_FILE_SIZE_LIMIT = """
import json, resource, signal, sys
from dal_widgets.training import MLP, save_checkpoint
save_checkpoint(sys.argv[1], MLP(2, 2), {"n_labels": 1})  # about 140 kB: fits
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_checkpoint(sys.argv[1], MLP(256, 10), {"n_labels": 2})  # about 400 kB: does not fit
except BaseException as exc:
    print(json.dumps({"mro": [c.__name__ for c in type(exc).__mro__], "msg": str(exc),
                      "errno": getattr(exc, "errno", None)}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX resource limits")
def test_a_failed_write_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    # A real OS write failure without root: a file-size limit (EFBIG) stands in for a full disk.
    target = tmp_path / "m.pt"
    out = subprocess.run(
        [sys.executable, "-c", _CHILD_FILE_SIZE_LIMIT, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    err = json.loads(out.stdout)
    assert {"CheckpointWriteError", "ValueError", "OSError"} <= set(err["mro"]), err
    assert err["errno"] == errno.EFBIG and str(target) in err["msg"], err
    assert "File too large" in err["msg"] and "unchanged" in err["msg"], err
    assert load_checkpoint(target, MLP(2, 2))["n_labels"] == 1
    assert os.listdir(tmp_path) == ["m.pt"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 kB tmpfs (needs root and mount; skipped elsewhere)."""
    where = tmp_path / "tiny"
    where.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_export_on_a_full_disk_is_a_clear_error_and_leaves_nothing(tiny_tmpfs):
    target = tiny_tmpfs / "m.pt"
    save_checkpoint(target, MLP(2, 2), {"n_labels": 1})
    with pytest.raises(CheckpointWriteError, match="No space left on device") as info:
        save_checkpoint(target, MLP(256, 10), {"n_labels": 2})
    assert isinstance(info.value, ValueError) and isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert load_checkpoint(target, MLP(2, 2))["n_labels"] == 1
    assert os.listdir(tiny_tmpfs) == ["m.pt"]


@pytest.mark.skipif(sys.platform == "win32", reason="Windows goes by the tmp file's age")
def test_the_next_export_cleans_stale_tmp_files_of_its_target(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(done.stdout)  # a process that has exited
    stale = [".m.pt.tmp", f".m.pt.{dead}.tmp", f".m.pt.{dead}.0a1b2c3d.tmp"]
    running = f".m.pt.{os.getppid()}.0a1b2c3d.tmp"  # another live process's export in flight
    others = [".m.ckpt.tmp", ".other.pt.tmp", "m.pt.notes"]  # other targets' files
    for name in [*stale, running, *others]:
        (tmp_path / name).write_bytes(b"half")
    save_checkpoint(tmp_path / "m.pt", MLP(2, 2), {})
    assert sorted(os.listdir(tmp_path)) == sorted(["m.pt", running, *others])


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[]", "must be a JSON object"),
        ('{"n_labels": 3, "classes": ["a"', "not valid JSON"),
        ("", "not valid JSON"),
        ('{"n_labels": "abc"}', r"'n_labels' must be an int >= 0. Got 'abc'"),
        ('{"n_labels": true}', r"'n_labels' must be an int >= 0. Got True"),
        ('{"classes": "ab"}', r"'classes' must be a list of str"),
        ('{"input_shape": [2, -1]}', r"'input_shape' must be a list of ints >= 0"),
        ('{"dataset_fingerprint": 7}', r"'dataset_fingerprint' must be a str"),
    ],
)
def test_bad_checkpoint_configs_are_clear_errors_that_name_the_file(tmp_path, text, problem):
    model = MLP(2, 2)
    old = tmp_path / "old.pt"  # the two-file format: the config is the .json beside
    torch.save(model.state_dict(), old)
    (tmp_path / "old.json").write_text(text)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_checkpoint(old, MLP(2, 2))
    assert str(tmp_path / "old.json") in str(info.value)
    new = tmp_path / "new.pt"  # the one-file format, with the same config inside
    save_checkpoint(new, model, {})
    payload = torch.load(new, weights_only=True)
    payload["config_json"] = text
    torch.save(payload, new)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_checkpoint(new, MLP(2, 2))
    assert str(new) in str(info.value)


def test_save_checkpoint_refuses_a_config_it_could_not_load_back(tmp_path):
    with pytest.raises(ValueError, match=r"'config' parameter of save_checkpoint.*'n_labels'"):
        save_checkpoint(tmp_path / "m.pt", MLP(2, 2), {"n_labels": "three"})
    with pytest.raises(TypeError, match=r"'config' parameter of save_checkpoint.*dict"):
        save_checkpoint(tmp_path / "m.pt", MLP(2, 2), [1, 2])
    assert os.listdir(tmp_path) == []
    save_checkpoint(tmp_path / "m.pt", MLP(2, 2), {"n_labels": np.int64(3), "x": np.arange(2)})
    assert load_checkpoint(tmp_path / "m.pt", MLP(2, 2)) == {"n_labels": 3, "x": [0, 1]}


def test_a_missing_or_foreign_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'path'.*does not exist") as info:
        load_checkpoint(tmp_path / "none.pt", MLP(2, 2))
    assert isinstance(info.value, ValueError)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt.*not a checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", MLP(2, 2))
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt.*list"):
        load_checkpoint(tmp_path / "list.pt", MLP(2, 2))


def test_a_checkpoint_that_does_not_fit_the_model_names_the_keys(tmp_path):
    save_checkpoint(tmp_path / "m.pt", MLP(2, 3), {})
    with pytest.raises(
        CheckpointError, match=r"m\.pt.*does not fit.*classifier\.weight.*\(3, 128\)"
    ):
        load_checkpoint(tmp_path / "m.pt", MLP(2, 2))
    with pytest.raises(CheckpointError, match=r"m\.pt.*does not fit.*missing.*loss_head"):
        load_checkpoint(tmp_path / "m.pt", MLP(2, 3, loss_head=True))


def test_load_checkpoint_refuses_a_checkpoint_of_another_dataset(tmp_path):
    torch.manual_seed(0)
    model, path = MLP(2, 2), tmp_path / "m.pt"
    config = {"classes": ["cat", "dog"], "dataset": "pets", "dataset_fingerprint": "f1"}
    save_checkpoint(path, model, config)
    fresh = MLP(2, 2)
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(
        CheckpointMismatchError,
        match=r"classes \['cat', 'dog'\].*\['ant', 'bee'\].*allow_other_dataset=True",
    ):
        load_checkpoint(path, fresh, classes=["ant", "bee"], fingerprint="f1")
    with pytest.raises(
        CheckpointMismatchError, match=r"'pets' \(fingerprint f1\).*'bugs' \(fingerprint f2\)"
    ) as info:
        load_checkpoint(path, fresh, classes=("cat", "dog"), fingerprint="f2", dataset_name="bugs")
    assert "allow_other_dataset=True" in str(info.value) and isinstance(info.value, ValueError)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # untouched
    load_checkpoint(path, fresh, classes=["ant", "bee"], fingerprint="f2", allow_other_dataset=True)
    assert _same_weights(fresh, model)
    assert load_checkpoint(path, MLP(2, 2), classes=("cat", "dog"), fingerprint="f1") == config


# ------------------------------------------------------------------------- standardization
def unscaled_table(n=400, seed=0):
    """A Unix-timestamp column, a column near 1e15, a constant column and a normal one."""
    rng = np.random.default_rng(seed)
    stamp = 1.7e9 + rng.uniform(0, 3.2e7, n)  # a year of timestamps
    huge = 1e15 * rng.uniform(1, 2, n)  # byte counts, ids, ...
    X = np.column_stack([stamp, huge, np.full(n, 5.0), rng.normal(size=n)]).astype(np.float32)
    y = ((stamp - 1.7e9) / 3.2e7 + (huge / 1e15 - 1) > 1).astype(np.int64)
    return X, y


def test_default_model_standardizes_unscaled_tabular_features():
    # Defect: raw timestamps and 1e15 values saturated the default MLP, its outputs were
    # constant, and margin sampling stopped with DegenerateScoresError.
    X, y = unscaled_table()
    torch.manual_seed(0)
    model = default_model((4,), 2, "tabular", inputs=X)
    fit(
        model,
        torch.as_tensor(X[:300]),
        torch.as_tensor(y[:300]),
        config=TrainConfig(steps=300, batch_size=64),
    )
    probs = predict(model, X[300:], {"probs"})["probs"]
    assert np.isfinite(probs).all() and probs[:, 1].std() > 0.1
    assert (probs.argmax(1) == y[300:]).mean() > 0.85
    assert len(strategies.select("margin", 5, probs=probs, rng=0)) == 5


def test_fit_standardizes_the_labeled_set_once_with_the_same_result():
    # A head fit ran the Standardize layer on every batch (a fifth of its time); it now runs
    # once per fit, and the weights come out as they did.
    X, y = unscaled_table(400)
    stats = Standardize.from_inputs(X)
    calls = []

    class PerStep(MLP):  # the old path: no forward_standardized, so fit calls forward
        forward_standardized = None  # type: ignore[assignment]

    models = []
    for cls in (MLP, PerStep):
        torch.manual_seed(3)
        model = cls(4, 2, hidden=(16,), standardize=copy.deepcopy(stats))
        model.standardize.register_forward_hook(lambda *_, c=cls: calls.append(c))
        fit(
            model,
            torch.as_tensor(X),
            torch.as_tensor(y),
            config=TrainConfig(steps=40, batch_size=100),
            seed=1,
        )
        models.append(model)
    assert calls.count(MLP) == 1 and calls.count(PerStep) == 40
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    probs = predict(models[0], X, {"probs"})["probs"]  # inference still standardizes
    with torch.no_grad():
        manual = models[0].forward_standardized(stats(torch.as_tensor(X))).softmax(1).numpy()
    np.testing.assert_allclose(probs, manual, rtol=1e-4, atol=1e-6)
    assert (probs.argmax(1) == y).mean() > 0.7


def test_standardize_statistics_are_float64_chunked_and_floor_constant_columns():
    X, _ = unscaled_table(1000)
    wide = X.astype(np.float64)
    s = Standardize.from_inputs(X, chunk_rows=7)  # 143 chunks, the last one short
    np.testing.assert_allclose(s.mean.numpy(), wide.mean(0), rtol=1e-6)
    std = wide.std(0)
    std[2] = 1.0  # a constant column is centred, not divided by zero
    np.testing.assert_allclose(s.std.numpy(), std, rtol=1e-5)
    assert s.mean.dtype == s.std.dtype == torch.float32
    z = s(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), [1, 1, 0, 1], atol=1e-3)
    ints = np.array([[2**62], [2**62 + 2**40], [2**61]], dtype=np.int64)  # x**2 overflows int64
    t = Standardize.from_inputs(torch.as_tensor(ints))
    assert np.isfinite(t.std.numpy()).all() and float(t.std[0]) > 1e18


def test_default_model_checks_its_inputs():
    with pytest.raises(
        ValueError, match=r"'input_shape' parameter of default_model.*feature.*\(0,\)"
    ):
        default_model((0,), 2, "tabular")
    with pytest.raises(
        ValueError, match=r"'inputs' parameter of default_model.*\(N, 4\).*\(5, 3\)"
    ):
        default_model((4,), 2, "tabular", inputs=np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"'inputs' parameter of default_model.*finite"):
        default_model((1,), 2, "tabular", inputs=np.array([[np.nan]], np.float32))
    X = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    assert getattr(default_model((1, 8, 8), 3, "image", inputs=X), "standardize", None) is None


def test_standardize_statistics_travel_in_the_checkpoint(tmp_path):
    X, _ = unscaled_table()
    model = default_model((4,), 2, "tabular", inputs=X).eval()
    save_checkpoint(tmp_path / "m.pt", model, {})
    other = default_model((4,), 2, "tabular", inputs=X[:10] * 3).eval()
    load_checkpoint(tmp_path / "m.pt", other)
    assert _same_weights(other, model) and "standardize.mean" in other.state_dict()
    prefix, rest = model.mc_split()  # the standardization runs once per chunk, before dropout
    x = torch.as_tensor(X[:16])
    with torch.no_grad():
        torch.testing.assert_close(rest(prefix(x)), model(x))


@pytest.mark.gpu
def test_a_standardized_model_trains_and_checkpoints_on_cuda(tmp_path):
    X, y = unscaled_table()
    model = default_model((4,), 2, "tabular", inputs=X).cuda()
    fit(model, torch.as_tensor(X).cuda(), torch.as_tensor(y).cuda(), config=TrainConfig(steps=100))
    save_checkpoint(tmp_path / "m.pt", model, {})
    other = default_model((4,), 2, "tabular", inputs=X[:10]).cuda()
    load_checkpoint(tmp_path / "m.pt", other)
    assert other.standardize.mean.is_cuda and _same_weights(other.cpu(), model.cpu())


def test_held_out_metrics_confusion_and_per_class_accuracy_by_hand():
    from dal_widgets.training import held_out_metrics

    # 4 classes; class 3 has no held-out sample. (true, pred) pairs:
    # (0,0) (0,0) (0,1) (1,1) (1,2) (2,2) (2,2) (2,0)
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    probs = np.full((8, 4), 0.1)
    probs[np.arange(8), pred] = 0.7
    m = held_out_metrics(probs, y, multi_label=False)
    assert m["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert m["per_class_accuracy"] == [2 / 3, 1 / 2, 2 / 3, None]
    assert m["accuracy"] == 5 / 8
    json.dumps(m)  # plain lists, ints, floats and None
    assert all(type(v) is int for row in m["confusion"] for v in row)
    with pytest.raises(ValueError, match=r"'y_eval' parameter of held_out_metrics.*\[0, 3\]"):
        held_out_metrics(probs, y + 2, multi_label=False)


def test_held_out_metrics_per_class_f1_for_multi_label_data():
    from dal_widgets.training import held_out_metrics

    y = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.uint8)
    probs = np.array(
        [[0.9, 0.1, 0.2, 0.4], [0.8, 0.3, 0.1, 0.7], [0.2, 0.9, 0.1, 0.1], [0.6, 0.1, 0.3, 0.8]]
    )
    m = held_out_metrics(probs, y, multi_label=True)
    # class 0: tp 2, fp 1, fn 0 -> 4/5; class 1: tp 1, fn 1 -> 2/3; class 2: undefined;
    # class 3: tp 1, fp 1, fn 1 -> 1/2
    assert m["per_class_f1"] == [pytest.approx(4 / 5), pytest.approx(2 / 3), None, 0.5]
    assert m["accuracy"] == pytest.approx(2 * 4 / (6 + 6))  # micro-F1: tp 4, 6 predicted, 6 true
    assert m["subset_accuracy"] == 0.25 and "confusion" not in m
    json.dumps(m)


def test_feature_dropout_draws_one_mask_per_batch_and_mc_passes_differ():
    from dal_widgets.training import EmbeddingHead, FeatureDropout

    drop = FeatureDropout(0.5).train()
    out = drop(torch.ones(64, 40))
    zero_cols = (out == 0).all(0)
    assert 0 < int(zero_cols.sum()) < 40  # whole features dropped, for every row at once
    assert torch.allclose(out[:, ~zero_cols], torch.full_like(out[:, ~zero_cols], 2.0))
    assert torch.equal(drop.eval()(torch.ones(3, 4)), torch.ones(3, 4))
    torch.manual_seed(0)
    head = EmbeddingHead(16, 3, dropout=0.3)
    X = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    mc = predict(head, X, {"mc_probs"}, mc_samples=6, seed=0)["mc_probs"]
    assert mc.shape == (50, 6, 3) and mc.std(axis=1).mean() > 1e-3  # passes differ


def test_concurrent_predictions_on_one_model_keep_their_own_embeddings_and_masks():
    # A query's pool pass and the evaluation after a fit run at once on the same model; the
    # embedding hook and the MC-dropout masks used to collect the other thread's forwards too
    # (a map failed with "size 1438 is different from 359": pool rows mixed with held-out rows).
    import threading

    torch.manual_seed(0)
    model = MLP(8, 3)
    rng = np.random.default_rng(0)
    big, small = rng.normal(size=(3000, 8)).astype(np.float32), rng.normal(size=(7, 8))
    want_big = predict(model, big, {"embeddings", "mc_probs"}, batch_size=50, mc_samples=4, seed=1)
    want_small = predict(model, small.astype(np.float32), {"probs"}, batch_size=1)
    errors = []

    def other():
        try:
            for _ in range(200):
                got = predict(model, small.astype(np.float32), {"probs"}, batch_size=1)
                np.testing.assert_allclose(got["probs"], want_small["probs"], rtol=1e-5)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    for _ in range(5):
        got = predict(model, big, {"embeddings", "mc_probs"}, batch_size=50, mc_samples=4, seed=1)
        assert got["embeddings"].shape == (3000, 128)
        np.testing.assert_allclose(got["embeddings"], want_big["embeddings"], rtol=1e-5)
        np.testing.assert_allclose(got["mc_probs"], want_big["mc_probs"], rtol=1e-5, atol=1e-7)
    thread.join()
    assert not errors, errors[0]


def test_thread_threads_changes_the_calling_thread_only():
    # Head fits run at one thread in the trainer's thread; the other threads keep theirs
    # (torch.set_num_threads would also change the default every new thread starts with).
    from dal_widgets.training._omp import thread_runtimes, thread_threads

    before = torch.get_num_threads()
    if thread_runtimes()[0] is None or before < 2:
        pytest.skip("needs torch's OpenMP runtime and at least 2 threads")
    seen = {}

    def other():
        seen["other"] = torch.get_num_threads()

    mkl = _mkl_threads()
    mkl_before = mkl() if mkl else None
    with thread_threads(1):
        seen["inside"] = torch.get_num_threads()
        seen["mkl"] = mkl() if mkl else 1
        t = threading.Thread(target=other)
        t.start()
        t.join()
        x = torch.randn(300, 300)
        torch.testing.assert_close(x @ x, (x.double() @ x.double()).float(), rtol=1e-4, atol=1e-3)
    assert seen == {"inside": 1, "mkl": 1, "other": before}
    assert torch.get_num_threads() == before
    assert (mkl() if mkl else None) == mkl_before


def _mkl_threads():
    """MKL's thread count for the calling thread, read through torch's library (or None)."""
    import ctypes
    import os

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        get = ctypes.CDLL(path).MKL_Get_Max_Threads
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_int
    return get


def test_a_session_fits_its_head_at_one_thread_and_leaves_its_threads_alone(tmp_path):
    import dal_widgets as dal

    if torch.get_num_threads() < 2:
        pytest.skip("needs at least 2 threads")
    rng = np.random.default_rng(0)
    E = rng.normal(size=(300, 16)).astype(np.float32)
    ds = dal.datasets.from_arrays(E, rng.integers(0, 3, 300), name="threads")
    s = dal.Session(ds, encoder=dal.encoders.precomputed(E), store=str(tmp_path / "t.db"))
    seen = []
    s.on("train_progress", lambda **_: seen.append(torch.get_num_threads()))
    s.label(ds.ids[:30].tolist(), [ds.classes[i % 3] for i in range(30)])
    s.wait()
    s.close()
    assert seen and set(seen) == {1}  # the trainer's thread, during the head's fit
    assert torch.get_num_threads() >= 2  # this thread's count is untouched


def test_embedding_head_masks_weights_as_it_would_mask_inputs():
    # A fit masks the classifier's columns (10 x D) instead of the batch (256 x D): the same
    # product, the same random mask, less work.
    from dal_widgets.training._models import EmbeddingHead

    head = EmbeddingHead(48, 5, dropout=0.3).train()
    x = torch.randn(16, 48)
    layer_calls = []
    forward = head.classifier.forward
    head.classifier.forward = lambda v: layer_calls.append(1) or forward(v)
    torch.manual_seed(4)
    fused = head(x)
    fused.square().sum().backward()
    fused_grad = head.classifier.weight.grad.clone()
    assert layer_calls == []  # the shortcut ran: the layer was not called
    head.classifier.weight.grad = None
    torch.manual_seed(4)
    plain = head.classifier(head.features(x))
    plain.square().sum().backward()
    assert layer_calls == [1]
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_grad, head.classifier.weight.grad, rtol=1e-5, atol=1e-6)
    del head.classifier.forward
    assert not torch.allclose(fused, head.eval()(x))  # the mask did drop features
    hooked = []
    head.train().classifier.register_forward_pre_hook(lambda _m, args: hooked.append(args[0]))
    torch.manual_seed(4)
    torch.testing.assert_close(head(x), plain, rtol=1e-5, atol=1e-6)
    assert hooked and hooked[0].shape == x.shape  # a hook still sees the layer run


def test_label_spreading_config_is_checked():
    with pytest.raises(ValueError, match="pseudo_labels=0.9"):
        TrainConfig(label_spreading=True, pseudo_labels=0.9).validated()
    with pytest.raises(ValueError, match="early_stopping=True"):
        TrainConfig(label_spreading=True, early_stopping=True).validated()
    with pytest.raises(ValueError, match="multi-label"):
        TrainConfig(label_spreading=True).validated(multi_label=True)
    with pytest.raises(TypeError, match="'label_spreading'"):
        TrainConfig(label_spreading="yes").validated()
    with pytest.raises(ValueError, match="'spread_neighbors'"):
        TrainConfig(spread_neighbors=0).validated()


def test_spreading_follows_the_graph_and_large_pools_use_a_subset():
    from dal_widgets.training._spreading import SpreadGraph

    rng = np.random.default_rng(0)
    # Two interleaved half-moons: a nearest-centroid rule gets them wrong, the graph does not.
    t = rng.uniform(0, np.pi, 400)
    moon = np.where(np.arange(400) < 200, 0, 1)
    x = np.stack([np.cos(t) + moon, np.sin(t) * np.where(moon, -1, 1) + 0.5 * moon], 1)
    x = (x + rng.normal(0, 0.03, x.shape)).astype(np.float32)
    g = SpreadGraph(x, 7, 10_000, torch.device("cpu"))
    seeds = np.array([int(np.argmin(t[:200])), 200 + int(np.argmin(t[200:]))])
    pos, cls = g.labels(seeds, moon[seeds], 2)
    assert pos.size == 398 and not np.isin(seeds, pos).any()
    assert (cls == moon[pos]).mean() > 0.97
    # A subset of 300: labeled samples outside it join it; only subset samples are targets.
    small = SpreadGraph(x, 7, 300, torch.device("cpu"))
    out = np.setdiff1d(np.arange(400), small.nodes)
    outside = np.array([out[out < 200][0], out[out >= 200][0]])  # one of each moon
    pos, cls = small.labels(outside, moon[outside], 2)
    assert np.isin(pos, small.nodes).all() and pos.size == 300
    assert small.matches(x, 7, 300, torch.device("cpu")) and not small.matches(
        x.copy(), 7, 300, torch.device("cpu")
    )


def test_spread_balance_keeps_a_class_labeled_often_from_flooding_its_neighbour():
    from dal_widgets.training._spreading import SpreadGraph

    rng = np.random.default_rng(0)
    # Two blobs side by side: 12 labels in the first, 1 at the far end of the second (as
    # active learning labels: unevenly). Plain spreading gives much of the second to the first.
    a, b = rng.normal([0, 0], 0.5, (150, 2)), rng.normal([2.0, 0], 0.5, (150, 2))
    x = np.concatenate([a, b]).astype(np.float32)
    truth = np.repeat([0, 1], 150)
    g = SpreadGraph(x, 7, 10_000, torch.device("cpu"))
    seeds = np.concatenate([rng.choice(150, 12, replace=False), [150 + int(np.argmax(b[:, 0]))]])
    second = []
    for balance in (0.0, 0.5, 1.0):
        pos, cls = g.labels(seeds, truth[seeds], 2, balance=balance)
        second.append((cls[pos >= 150] == 1).mean())
    assert second[0] < 0.7 and second[0] < second[1] - 0.05 < second[2] - 0.1
    assert second[2] > 0.8
    with pytest.raises(ValueError, match="'spread_balance'"):
        TrainConfig(spread_balance=1.5).validated()


def test_a_graph_build_stops_when_its_fit_is_cancelled():
    from dal_widgets.training._spreading import SpreadCancelled, SpreadGraph

    stop = threading.Event()
    stop.set()
    with pytest.raises(SpreadCancelled):
        SpreadGraph(np.zeros((50, 3), np.float32), 7, 100, torch.device("cpu"), stop=stop)


def test_spread_vote_config_is_checked():
    with pytest.raises(ValueError, match="'spread_vote'"):
        TrainConfig(spread_vote=1.5).validated()
    with pytest.raises(ValueError, match="'spread_vote_k'"):
        TrainConfig(spread_vote_k=0).validated()


def _vote_case():
    """A linear model that gets one cluster wrong, and a bank that knows both clusters."""
    from dal_widgets.training import SpreadVote

    torch.manual_seed(0)
    inner = nn.Sequential(nn.Dropout(0.3), nn.Linear(2, 2))
    with torch.no_grad():  # the model says class 0 everywhere
        inner[1].weight.zero_()
        inner[1].bias.copy_(torch.tensor([2.0, 0.0]))
    model = SpreadVote(inner, weight=0.75, k=3)
    a = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    b = a + 5.0
    return model, inner, torch.cat([a, b]), torch.tensor([0, 0, 0, 1, 1, 1])


def test_spread_vote_blends_the_models_probabilities_with_a_neighbour_vote():
    model, inner, bank_x, bank_y = _vote_case()
    x = torch.tensor([[0.05, 0.05], [5.05, 5.0]])
    model.eval()
    # No bank (a fresh model, and while it trains): the wrapped model's own output.
    torch.testing.assert_close(model(x), inner(x))
    model.set_bank(bank_x, bank_y)
    probs = torch.softmax(model(x), 1)
    own = torch.softmax(inner(x), 1)
    votes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # all 3 neighbours share the cluster's class
    torch.testing.assert_close(probs, 0.25 * own + 0.75 * votes)
    assert probs[1].argmax() == 1 and own[1].argmax() == 0  # the vote corrects the head
    assert classifier_layer(model) is inner[1]  # embeddings are the wrapped model's
    # MC dropout: each pass blends the same vote into that pass's sampled prediction.
    out = predict(model, x.numpy(), {"probs", "mc_probs", "embeddings"}, mc_samples=4)
    mc = torch.as_tensor(out["mc_probs"])
    assert mc.shape == (2, 4, 2) and out["embeddings"].shape == (2, 2)
    assert torch.all(mc[1, :, 1] >= 0.75 - 1e-6)  # the vote's share is there in every pass
    np.testing.assert_allclose(out["probs"], probs.detach().numpy(), rtol=1e-5, atol=1e-6)
    model.clear_bank()
    torch.testing.assert_close(model(x), inner(x))


def test_spread_vote_saves_its_bank_and_loads_across_voting_and_plain_models(tmp_path):
    from dal_widgets.training import SpreadVote

    model, inner, bank_x, bank_y = _vote_case()
    model.set_bank(bank_x, bank_y)
    x = torch.tensor([[0.05, 0.05], [5.05, 5.0]])
    path = save_checkpoint(tmp_path / "vote.pt", model, {"classes": ["a", "b"]})
    fresh = SpreadVote(nn.Sequential(nn.Dropout(0.3), nn.Linear(2, 2)), weight=0.75, k=3)
    load_checkpoint(path, fresh)  # the bank is sized by the checkpoint
    assert fresh.bank.shape == (6, 2)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
    # Spreading turned off since: the weights load into the plain model, without the bank.
    plain = nn.Sequential(nn.Dropout(0.3), nn.Linear(2, 2))
    load_checkpoint(path, plain)
    torch.testing.assert_close(plain.eval()(x), inner.eval()(x))
    # Turned on since: a plain checkpoint loads into the wrapped model, which votes after a fit.
    again = SpreadVote(nn.Sequential(nn.Dropout(0.3), nn.Linear(2, 2)), weight=0.75, k=3)
    load_checkpoint(save_checkpoint(tmp_path / "plain.pt", plain), again)
    assert again.bank.shape[0] == 0
    torch.testing.assert_close(again.eval()(x), inner(x))
