from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from dal_widgets.training import (
    MLP,
    Callback,
    EarlyStopping,
    SmallCNN,
    TrainConfig,
    classifier_layer,
    default_model,
    fit,
    has_dropout,
    predict,
    resolve_device,
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
