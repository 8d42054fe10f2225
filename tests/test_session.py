from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import dal_widgets as dal
from dal_widgets.store import StoreMismatchError
from dal_widgets.training import TrainConfig

FAST = TrainConfig(steps=40, batch_size=32)


def blobs(n=240, seed=0, holdout=0.25):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [4, 0], [0, 4]], dtype=float)
    y = np.arange(n) % 3
    X = centers[y] + rng.normal(scale=0.7, size=(n, 2))
    return dal.datasets.from_arrays(
        X, y=np.array(["a", "b", "c"])[y], holdout=holdout, name="blobs"
    )


@pytest.fixture
def ds():
    return blobs()


@pytest.fixture
def session(ds, tmp_path):
    s = dal.Session(
        ds, strategy="entropy", store=str(tmp_path / "s.db"), device="cpu", train_config=FAST
    )
    yield s
    s.close()


def oracle(ds, ids):
    return ds.targets[ds.positions(ids)].tolist()


def test_query_cold_start_then_strategy(session, ds):
    ids = session.query(12)
    assert len(ids) == 12 and len(set(ids)) == 12
    assert session.store.queries()[-1]["strategy"] == "random (cold start for entropy)"
    session.label(ids, oracle(ds, ids))
    session.train(block=True)
    more = session.query(10)
    assert not set(more) & set(ids)
    assert session.store.queries()[-1]["strategy"] == "entropy"
    assert session.round == 2 and session.pending == more


def test_entropy_queries_prefer_uncertain_points(session, ds):
    start = [ds.ids[i] for i in range(30)]
    session.label(start, oracle(ds, start))
    session.train(block=True)
    picks = session.query(10)
    probs = session.predict_proba()
    ent = -(probs * np.log(probs + 1e-12)).sum(1)
    unl = np.setdiff1d(np.arange(len(ds)), ds.positions(start))
    threshold = np.sort(ent[unl])[-10]
    assert (ent[ds.positions(picks)] >= threshold - 1e-6).all()


def test_label_forms_and_events(session, ds):
    seen = []
    session.on("labeled", lambda **kw: seen.append(kw))
    a, b, c = (ds.python_id(i) for i in ds.ids[:3])
    session.label([a, b], ["a", 2])  # a class name, a class index
    session.label(c, "b")  # one id
    session.label([a, b], "c")  # one label for several ids
    assert session.labels == {a: "c", b: "c", c: "b"}
    assert seen[0] == {"ids": [a, b], "labels": ["a", "c"], "source": "human"}
    assert session.undo() == [a, b]
    assert session.labels == {a: "a", b: "c", c: "b"}


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda s, ds: s.label([10**9], ["a"]), KeyError, "unknown sample id"),
        (lambda s, ds: s.label([ds.ids[0]], ["zebra"]), ValueError, "'labels'.*'zebra'"),
        (lambda s, ds: s.label([ds.ids[0]], [7]), ValueError, r"indices in \[0, 2\]"),
        (lambda s, ds: s.label([ds.ids[0], ds.ids[1]], ["a"]), ValueError, "one label per id"),
        (lambda s, ds: s.label([], []), ValueError, "at least one"),
        (lambda s, ds: s.label(None, "a"), TypeError, "'ids'"),
        (lambda s, ds: s.query(0), ValueError, r"'n'.*\[1, 180\]. Got 0"),
        (lambda s, ds: s.query(181), ValueError, r"'n'.*\[1, 180\]. Got 181"),
        (lambda s, ds: s.query(2.5), TypeError, "'n'"),
        (lambda s, ds: setattr(s, "strategy", "entropi"), KeyError, "Did you mean 'entropy'"),
        (lambda s, ds: s.train(), ValueError, "at least one label"),
        (lambda s, ds: s.on("nonsense", print), ValueError, "'event'"),
    ],
)
def test_bad_input_is_named(session, ds, call, exc, match):
    with pytest.raises(exc, match=match):
        call(session, ds)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"dataset": np.zeros(3)}, TypeError, "'dataset'"),
        ({"seed": -1}, ValueError, "'seed'"),
        ({"device": "tpu"}, ValueError, "'device'"),
        ({"model": 42}, TypeError, "'model'"),
        ({"model": "big"}, ValueError, "'model'"),
        ({"strategy": "nope"}, KeyError, "Unknown strategy"),
        ({"train_config": TrainConfig(steps=0)}, ValueError, "'steps'"),
        ({"cold_start": "margin"}, ValueError, "'cold_start'"),  # needs the model it lacks
    ],
)
def test_bad_session_arguments(ds, kwargs, exc, match):
    args = {"dataset": ds, "store": None, **kwargs}
    with pytest.raises(exc, match=match):
        dal.Session(**args)


def test_train_runs_in_background_and_reports_progress(ds):
    slow = TrainConfig(steps=3000, batch_size=8)
    s = dal.Session(ds, store=None, device="cpu", train_config=slow)
    seen = []
    s.on("train_progress", lambda progress: seen.append(progress))
    ids = ds.ids[:60].tolist()
    s.label(ids, oracle(ds, ids))
    t0 = time.perf_counter()
    s.train()
    assert time.perf_counter() - t0 < 0.5 and s.training
    assert s.wait(timeout=120)
    assert s.model_version.version == 1 and s.model_version.n_labels == 60
    assert seen and seen[-1]["step"] == seen[-1]["steps"] and not s.observer_errors
    assert {"epoch", "loss", "samples_per_second", "eta"} <= set(seen[0])
    s.close()


def test_a_request_made_before_the_fit_reads_its_labels_is_served_by_that_fit(ds, monkeypatch):
    # The race CI hit on Intel: label() starts the first fit; train() came after the trainer
    # took the request but before the fit had read the labels, and a second fit ran.
    s = dal.Session(ds, store=None, device="cpu", train_config=TrainConfig(steps=50))
    started, go = threading.Event(), threading.Event()
    read = s.inputs.dataset

    def slow_read(*args, **kwargs):  # the trainer's read of its data waits for ``go``
        if threading.current_thread().name == "dal-widgets-trainer":
            started.set()
            assert go.wait(30)
        return read(*args, **kwargs)

    monkeypatch.setattr(s.inputs, "dataset", slow_read)
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))  # the first fit starts by itself
    assert started.wait(30)
    s.train()  # the same labels: the fit about to read them serves this request
    go.set()
    assert s.wait(timeout=60)
    assert s.model_version.version == 1
    more = ds.ids[30:40].tolist()
    started.clear()
    go.clear()
    s.train()
    assert started.wait(30)
    s.label(more, oracle(ds, more))  # retrain="batch": no fit of its own
    s.train()  # asked for before the fit reads: the 40 labels are in it
    go.set()
    assert s.wait(timeout=60)
    assert s.model_version.version == 2 and s.model_version.n_labels == 40
    s.close()


def test_labels_given_during_training_reach_the_next_fit(ds):
    s = dal.Session(ds, store=None, device="cpu", train_config=TrainConfig(steps=400, batch_size=8))
    first = ds.ids[:20].tolist()
    s.label(first, oracle(ds, first))
    s.train()
    more = ds.ids[20:50].tolist()
    s.label(more, oracle(ds, more))  # while the first fit runs
    s.train()  # queued behind it
    assert s.wait(timeout=120)
    assert s.model_version.n_labels == 50 and s.staleness == 0
    s.close()


def test_stop_cancels_within_a_second(ds):
    s = dal.Session(
        ds, store=None, device="cpu", train_config=TrainConfig(steps=10**6, batch_size=8)
    )
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))
    s.train()
    time.sleep(0.3)
    t0 = time.perf_counter()
    s.stop()
    assert s.wait(timeout=5)
    assert time.perf_counter() - t0 < 1.0
    assert s.model is None and s.progress["state"] == "cancelled"
    s.close()


def test_training_error_is_captured_and_next_train_works(ds):
    calls = {"n": 0}

    def factory(shape, n_classes):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom in the model factory")
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(shape[0], 16),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(16, n_classes),
        )

    s = dal.Session(
        ds, model=factory, store=None, device="cpu", train_config=FAST, retrain="manual"
    )
    errors = []
    s.on("train_failed", lambda error: errors.append(error))
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))
    s.train()
    s.wait(timeout=60)
    assert "boom in the model factory" in s.train_error and "Traceback" in s.train_error
    assert errors and s.model is None
    s.train(block=True)
    assert s.train_error is None and s.model_version.version == 1
    assert s.evaluate()["accuracy"] > 0.5  # chance is 1/3
    s.close()


def test_same_seed_same_model_and_picks(ds):
    def run():
        s = dal.Session(ds, strategy="margin", store=None, device="cpu", seed=3, train_config=FAST)
        ids = s.query(15)
        s.label(ids, oracle(ds, ids))
        s.train(block=True)
        picks = s.query(5)
        state = {k: v.clone() for k, v in s.model.state_dict().items()}
        s.close()
        return ids, picks, state

    a, b = run(), run()
    assert a[0] == b[0] and a[1] == b[1]
    for k in a[2]:
        assert torch.equal(a[2][k], b[2][k]), k


def test_labels_before_the_embeddings_give_the_same_first_model(monkeypatch, tmp_path):
    # simulate's order: labels, then a fit, while the embedding job is still running. The job
    # used to build a model for saved weights (none here) during the fit, drawing from the
    # global generator the fit was drawing its dropout from: another model each run.
    ds = dal.datasets.digits()
    ids = ds.ids[:40].tolist()

    def slow(batch):  # 15 batches: about 1 s to embed the pool, each session anew
        time.sleep(0.06)
        return batch.reshape(len(batch), -1)[:, ::2]

    enc = dal.encoders.from_callable(slow, name="slow", batch_size=128)
    built = []
    new_model = dal.Session._new_model  # noqa: SLF001 - counted: what builds models
    monkeypatch.setattr(dal.Session, "_new_model", lambda s: built.append(1) or new_model(s))

    def first_model(wait_first: bool) -> str:
        store = str(tmp_path / f"s{len(built)}-{wait_first}.db")  # its own embedding cache
        s = dal.Session(ds, store=store, device="cpu", seed=2, encoder=enc, retrain="manual")
        if wait_first:
            assert s.inputs.wait(60)
        else:
            assert not s.inputs.embedded  # the labels come first
        s.label(ids, oracle(ds, ids))
        s.train(block=True)
        key = s.model_version.key
        s.close()
        return key

    keys = {first_model(False) for _ in range(3)}
    assert len(built) == 3  # one model per fit, none for weights that do not exist
    assert keys == {first_model(True)}


def test_evaluate_and_history(session, ds):
    with pytest.raises(RuntimeError, match="No trained model"):
        session.evaluate()
    ids = session.query(30)
    session.label(ids, oracle(ds, ids))
    session.train(block=True)
    res = session.evaluate()
    assert res["n_eval"] == 60 and res["n_labels"] == 30 and res["accuracy"] > 0.8
    (row,) = session.history
    assert row["round"] == 1 and row["n_labels"] == 30 and row["accuracy"] == res["accuracy"]
    assert row["train_s"] > 0 and row["select_s"] >= 0 and row["infer_s"] >= 0


def test_evaluate_without_holdout(tmp_path):
    ds = blobs(holdout=None)
    s = dal.Session(ds, store=None, device="cpu", train_config=FAST)
    ids = ds.ids[:9].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    with pytest.raises(ValueError, match="held-out split.*holdout=0.2"):
        s.evaluate()
    s.close()


def test_resume_from_store(ds, tmp_path):
    path = str(tmp_path / "resume.db")
    s = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    ids = s.query(8)
    s.label(ids[:5], oracle(ds, ids[:5]))
    s.skip(ids[5])
    s.close()
    again = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    assert again.labels == dict(zip(ids[:5], ["abc"[t] for t in oracle(ds, ids[:5])]))
    assert again.round == 1 and again.pending == ids[6:]
    nxt = again.query(5)
    assert not set(nxt) & set(ids[:6])  # labeled and skipped samples are not offered again
    again.close()


def test_store_of_another_dataset_is_refused(ds, tmp_path):
    path = str(tmp_path / "x.db")
    dal.Session(ds, store=path, device="cpu").close()
    with pytest.raises(StoreMismatchError, match="belongs to another dataset"):
        dal.Session(blobs(seed=1), store=path, device="cpu")


def test_custom_module_and_embeddings(ds):
    net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
    s = dal.Session(ds, model=net, store=None, device="cpu", train_config=FAST)
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    arrays = s.compute_arrays({"probs", "embeddings", "mc_probs"})
    assert arrays["probs"].shape == (180, 3) and arrays["embeddings"].shape == (180, 32)
    assert arrays["mc_probs"].shape == (180, FAST.mc_samples, 3)
    assert np.abs(arrays["mc_probs"].std(axis=1)).max() > 0  # dropout really varies
    s.close()


def test_mc_dropout_on_a_model_without_dropout_is_a_clear_error(ds):
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    s = dal.Session(ds, model=net, store=None, device="cpu", train_config=FAST)
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    with pytest.raises(ValueError, match="no dropout|none"):
        s.compute_arrays({"mc_probs"})
    s.close()


def test_observer_errors_do_not_break_the_session(session, ds):
    session.on("labeled", lambda **kw: 1 / 0)
    hits = []
    session.on("labeled", lambda **kw: hits.append(1))
    session.label(ds.ids[0], "a")
    assert hits == [1] and "ZeroDivisionError" in session.observer_errors[0]


def test_many_labels_while_training():
    """200 labels through the public API while the worker trains; the next fit uses them all."""
    ds = blobs(n=320)
    before = set(threading.enumerate())  # earlier tests may leave their own threads running
    s = dal.Session(ds, store=None, device="cpu", train_config=TrainConfig(steps=300, batch_size=8))
    errors = []
    s.on("train_failed", lambda error: errors.append(error))
    s.label(ds.ids[:10].tolist(), oracle(ds, ds.ids[:10]))
    s.train()
    for i in range(10, 210):
        s.label(ds.python_id(ds.ids[i]), oracle(ds, [ds.ids[i]])[0])
        if i % 40 == 0:
            s.train()
    assert s.training  # labels went in while fits were running
    s.train()
    assert s.wait(timeout=120) and not errors
    assert len(s.labels) == 210 and s.model_version.n_labels == 210
    added = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert len(added) <= 1, added  # one worker thread for all those fits, not one per train()
    s.close()


def test_label_is_durable_when_the_process_is_killed(ds, tmp_path):
    path = str(tmp_path / "kill.db")
    code = textwrap.dedent(f"""
        import numpy as np, dal_widgets as dal
        rng = np.random.default_rng(0)
        centers = np.array([[0, 0], [4, 0], [0, 4]], dtype=float)
        y = np.arange(240) % 3
        X = centers[y] + rng.normal(scale=0.7, size=(240, 2))
        ds = dal.datasets.from_arrays(X, y=np.array(["a", "b", "c"])[y], holdout=0.25, name="blobs")
        s = dal.Session(ds, store={path!r}, device="cpu")
        for i in ds.ids.tolist():
            s.label(i, "a")
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    returned = []
    for line in proc.stdout:
        returned.append(int(line))
        if len(returned) == 25:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    s = dal.Session(ds, store=path, device="cpu")
    assert set(returned) <= set(s.labels)
    s.close()


def test_early_stopping_holds_out_a_validation_slice(ds):
    cfg = TrainConfig(steps=2000, batch_size=16, early_stopping=True, min_val=5, patience=5)
    s = dal.Session(ds, store=None, device="cpu", train_config=cfg, retrain="manual")
    seen = []
    s.on("train_progress", lambda progress: seen.append(progress))
    ids = ds.ids[:60].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    last = [p for p in seen if p.get("state") == "training"][-1]
    assert 0.0 <= last["val_accuracy"] <= 1.0  # the callback ran on the held-out slice
    assert s.model_version.steps < 2000  # it stopped early
    assert s.model_version.n_labels == 60
    s.close()


def test_pseudo_labels_refit_on_confident_pool_predictions(ds):
    ids = [ds.ids[ds.targets == c][:3] for c in range(3)]
    ids = np.concatenate(ids).tolist()
    fits = []
    models = {}
    for threshold in (0.0, 0.9):
        cfg = TrainConfig(steps=150, batch_size=16, pseudo_labels=threshold, pseudo_per_class=20)
        s = dal.Session(ds, store=None, device="cpu", train_config=cfg, retrain="manual")
        s.on("train_started", lambda t=threshold, **kw: fits.append(t))
        s.label(ids, oracle(ds, ids))
        s.train(block=True)
        models[threshold] = (s.pseudo_label_count, s.evaluate()["accuracy"], len(s.labels))
        s.close()
    assert models[0.0][0] == 0
    count, accuracy, n_labels = models[0.9]
    assert 0 < count <= 3 * 20  # at most pseudo_per_class per class
    assert n_labels == 9  # pseudo-labels are never written to the store
    assert accuracy > 0.9  # easy blobs: the guesses are right and the student learns them
    assert fits.count(0.9) == 1  # one model version per train(), whatever it did inside


def test_pseudo_labels_refuse_multi_label_data():
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = [["a"], ["b"], ["a", "b"], []] * 10
    ml = dal.datasets.from_arrays(X, y=y, classes=["a", "b"], multi_label=True, holdout=0.25)
    with pytest.raises(ValueError, match="pseudo_labels.*single-label"):
        dal.Session(ml, store=None, device="cpu", train_config=TrainConfig(pseudo_labels=0.9))


def test_warm_start_continues_from_the_newest_model(ds):
    cfg = TrainConfig(steps=1, lr=1e-6, warm_start=True)
    s = dal.Session(ds, store=None, device="cpu", train_config=cfg, retrain="manual")
    ids = ds.ids[:20].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    first = {k: v.clone() for k, v in s.model.state_dict().items()}
    s.label(ds.ids[20:25].tolist(), oracle(ds, ds.ids[20:25]))
    s.train(block=True)
    diff = max(float((v - first[k]).abs().max()) for k, v in s.model.state_dict().items())
    assert diff < 1e-3  # one tiny step away from the previous weights, not a fresh init
    s.close()


def test_cuda_out_of_memory_halves_the_batch_once_then_fails_clearly(ds, monkeypatch):
    import dal_widgets.training._trainer as trainer_module  # the trainer's one fit call

    real_fit = trainer_module.fit
    batches = []

    def flaky_fit(*args, config, **kwargs):
        batches.append(config.batch_size)
        if len(batches) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_fit(*args, config=config, **kwargs)

    monkeypatch.setattr(trainer_module, "fit", flaky_fit)
    s = dal.Session(ds, store=None, device="cpu", train_config=FAST, retrain="manual")
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    assert batches == [32, 16] and s.model_version.version == 1

    def always_oom(*args, config, **kwargs):
        batches.append(config.batch_size)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(trainer_module, "fit", always_oom)
    s.train()
    s.wait(30)
    assert "ran out of memory with batch size 32 and again with 16" in s.train_error
    s.close()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_session_trains_on_cuda(ds, precision):
    s = dal.Session(
        ds,
        store=None,
        device="cuda",
        train_config=TrainConfig(steps=200, precision=precision),
        retrain="manual",
    )
    ids = ds.ids[:60].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    assert next(s.model.parameters()).is_cuda
    assert s.evaluate()["accuracy"] > 0.8
    arrays = s.compute_arrays({"probs", "mc_probs", "embeddings"})
    assert arrays["mc_probs"].shape[1] == 20
    s.close()


def test_committee_strategies_train_an_ensemble(ds):
    s = dal.Session(
        ds,
        strategy="vote_entropy",
        store=None,
        device="cpu",
        retrain="manual",
        train_config=TrainConfig(steps=40, ensemble_size=3),
    )
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    assert s.compute_arrays({"member_probs"})["member_probs"].shape == (180, 3, 3)
    picks = s.query(5)
    assert len(set(picks)) == 5 and s.store.queries()[-1]["strategy"] == "vote_entropy"
    single = dal.Session(
        ds, strategy="consensus_kl", store=None, device="cpu", retrain="manual", train_config=FAST
    )
    single.label(ids, oracle(ds, ids))
    single.train(block=True)
    with pytest.raises(ValueError, match="ensemble_size=5"):
        single.query(5)
    s.close()
    single.close()


@pytest.mark.parametrize(
    "strategy", ["learning_loss", "dfal", "egl", "badge", "bald", "batchbald", "typiclust"]
)
def test_every_model_based_strategy_runs_inside_a_session(ds, strategy):
    s = dal.Session(
        ds,
        strategy=strategy,
        store=None,
        device="cpu",
        retrain="manual",
        train_config=TrainConfig(steps=40, deepfool_iters=10),
    )
    ids = ds.ids[:30].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    picks = s.query(6)
    assert len(set(picks)) == 6 and not set(picks) & set(ids)
    assert s.store.queries()[-1]["strategy"] == strategy
    s.close()


# ---------------------------------------------------------------------------- lifecycle
_EXIT_WHILE_TRAINING = textwrap.dedent("""
    import os, sqlite3, sys, tempfile
    import dal_widgets as dal
    from dal_widgets.training import TrainConfig
    p = os.path.join(tempfile.mkdtemp(), "x.db")
    ds = dal.datasets.digits()
    s = dal.Session(ds, strategy="random", store=p, seed=0, device="cpu",
                    train_config=TrainConfig(steps=100_000, batch_size=8))
    ids = s.query(3)
    s.label(ids, [ds.targets[ds.positions(ids)][i] for i in range(3)])  # the batch: a fit starts
    con = sqlite3.connect(p)
    for t in [r[0] for r in con.execute("select name from sqlite_master where type='table'")]:
        x = [r[1] for r in con.execute(f"pragma table_info({t})")]
    print("done", s.training, flush=True)
""")


@pytest.mark.slow
def test_a_script_that_ends_while_the_worker_trains_exits_cleanly():
    """The worker is stopped and joined at interpreter exit: no abort (it was exit code 134,
    "terminate called without an active exception", 4 times in 10)."""
    for _ in range(4):
        proc = subprocess.run(
            [sys.executable, "-c", _EXIT_WHILE_TRAINING],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "done True" in proc.stdout, proc.stderr[-2000:]
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "terminate called" not in proc.stderr


def _trainer_threads():
    return [t for t in threading.enumerate() if t.name == "dal-widgets-trainer" and t.is_alive()]


def test_a_takeover_stops_and_releases_the_old_session(ds, tmp_path):
    """Re-running ``s = Session(ds, store=path)`` in a notebook: the old session's worker stops
    and its model and pool-sized arrays are let go (they leaked: 32 threads after 30 re-runs)."""
    path = str(tmp_path / "re.db")
    before = len(_trainer_threads())
    s = None
    for _ in range(6):
        s = dal.Session(ds, store=path, device="cpu", train_config=FAST, retrain="manual")
        if not s.labels:
            s.label(ds.ids[:9].tolist(), oracle(ds, ds.ids[:9]))
        s.train(block=True)
        s.query(3)
        assert s.model is not None and s.last_query is not None
    old = s
    new = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    assert old.model is None and old.last_query is None and not old.training
    assert len(_trainer_threads()) <= before  # every earlier worker has ended
    with pytest.raises(dal.store.StoreClosedError, match="newer LabelStore"):
        old.train(block=True)
    assert len(new.labels) == 9 and old.store.closed
    new.close()


def test_a_closed_session_fails_at_once_without_fitting(ds, tmp_path):
    s = dal.Session(
        ds, store=str(tmp_path / "c.db"), device="cpu", train_config=FAST, retrain="manual"
    )
    s.label(ds.ids[:6].tolist(), oracle(ds, ds.ids[:6]))
    started = []
    s.on("train_started", lambda **kw: started.append(kw))
    s.store.close()
    for call in (lambda: s.train(block=True), lambda: s.train(), lambda: s.query(2)):
        with pytest.raises(dal.store.StoreClosedError, match="is closed"):
            call()
    s.close()
    with pytest.raises(dal.store.StoreClosedError):
        s.train()
    assert started == []  # no fit ran before the error


def test_read_only_session_shows_but_never_writes(ds, tmp_path):
    path = str(tmp_path / "ro.db")
    writer = dal.Session(ds, store=path, device="cpu")
    writer.label(ds.ids[:4].tolist(), oracle(ds, ds.ids[:4]))
    reader = dal.Session(ds, store=path, device="cpu", read_only=True)
    assert reader.labels == writer.labels and reader.store.read_only
    for call in (
        lambda: reader.label(ds.ids[5], "a"),
        lambda: reader.query(2),
        lambda: reader.train(),
    ):
        with pytest.raises(dal.store.StoreError, match="read_only=True"):
            call()
    writer.label(ds.ids[4], "a")  # the writer is not disturbed
    reader.close()
    writer.close()


def _generator_of(ids):
    yield from ids


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda s, ds: s.label(np.array([ds.ids[:2]]), "a"), TypeError, "'ids'.*1-D"),
        (lambda s, ds: s.label([[ds.ids[0]]], "a"), TypeError, "'ids'.*1-D"),
        (lambda s, ds: s.query(2, exclude=5), TypeError, "'exclude'"),
        (lambda s, ds: s.query(2, exclude="abc"), TypeError, "'exclude'"),
        (lambda s, ds: s.wait(timeout="1"), TypeError, "'timeout'"),
        (lambda s, ds: s.wait(timeout=-1), ValueError, "'timeout'"),
        (lambda s, ds: s.label([2**70], "a"), KeyError, "'ids'|unknown sample id"),
    ],
)
def test_type_errors_name_the_parameter(session, ds, call, exc, match):
    with pytest.raises(exc, match=match):
        call(session, ds)


def test_exclude_may_be_a_generator(session, ds):
    first = ds.ids[:100].tolist()
    picks = session.query(5, exclude=_generator_of(first))
    assert not set(picks) & set(first)


@pytest.mark.parametrize("store", [123, b"x.db", 1.5, ["x.db"]])
def test_store_must_be_a_path(ds, tmp_path, monkeypatch, store):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="'store' parameter of Session"):
        dal.Session(ds, store=store)
    assert list(tmp_path.iterdir()) == []  # no file named 123 or b'x.db'


def test_one_pool_inference_per_model_version(ds, tmp_path, monkeypatch):
    """A query, a map refresh, an explain, predictions and an evaluate share one pool pass."""
    import dal_widgets.training._arrays as arrays_module
    import dal_widgets.training._metrics as metrics_module
    from dal_widgets.projection import Projector

    pool_calls = []

    def counting(real):
        def wrapped(model, X, *args, **kwargs):
            if len(X) == len(ds):
                pool_calls.append(sorted(args[0] if args else kwargs.get("needs", ())))
            return real(model, X, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(arrays_module, "predict", counting(arrays_module.predict))
    monkeypatch.setattr(metrics_module, "predict", counting(metrics_module.predict))
    s = dal.Session(
        ds,
        strategy="margin",
        store=str(tmp_path / "a.db"),
        device="cpu",
        train_config=FAST,
        retrain="manual",
    )
    s.label(ds.ids[:12].tolist(), oracle(ds, ds.ids[:12]))
    s.train(block=True)
    ids = s.query(5)
    Projector(s, method="pca").refresh(block=True)  # the map of the model's embeddings
    s.explain(ids)
    s.predict_proba()
    s.evaluate()
    assert len(pool_calls) == 1 and s.arrays.passes == 1
    assert pool_calls[0] == ["embeddings", "probs"]  # one forward pass gives both
    s.label(ids, oracle(ds, ids))
    s.train(block=True)  # a new version: one more pass, no more
    s.query(5)
    s.explain(ids)
    assert len(pool_calls) == 2
    s.close()


def test_margin_runs_on_unscaled_tabular_data_through_the_session(tmp_path):
    """Timestamps (~1.7e9) and 1e15-sized values: the default model standardizes them, so
    margin sampling gets varied scores (it stopped with DegenerateScoresError)."""
    rng = np.random.default_rng(0)
    stamp = 1.7e9 + rng.uniform(0, 3.2e7, 300)
    huge = 1e15 * rng.uniform(1, 2, 300)
    X = np.column_stack([stamp, huge, np.full(300, 5.0)]).astype(np.float32)
    y = ((stamp - 1.7e9) / 3.2e7 + (huge / 1e15 - 1) > 1).astype(np.int64)
    ds = dal.datasets.from_arrays(X, y=y, kind="tabular", holdout=0.2)
    s = dal.Session(ds, strategy="margin", store=None, device="cpu", retrain="manual")
    ids = ds.ids[:40].tolist()
    s.label(ids, ds.targets[ds.positions(ids)].tolist())
    s.train(block=True)
    assert len(set(s.query(5))) == 5
    assert np.ptp(s.predict_proba()[:, 0]) > 0.1 and s.evaluation["accuracy"] > 0.7
    path = s.export_model(tmp_path / "m.pt")
    again = dal.Session(ds, store=None, device="cpu")
    again.load_model(path)  # the standardization travels with the weights
    np.testing.assert_allclose(again.predict_proba(), s.predict_proba(), atol=1e-5)


def test_load_model_refuses_a_checkpoint_of_another_dataset(ds, tmp_path):
    from dal_widgets.training import CheckpointMismatchError

    s = dal.Session(ds, store=None, device="cpu", train_config=FAST, retrain="manual")
    s.label(ds.ids[:9].tolist(), oracle(ds, ds.ids[:9]))
    s.train(block=True)
    path = s.export_model(tmp_path / "m.pt")
    animals = dal.datasets.from_arrays(
        ds.X, y=np.array(["cat", "dog", "eel"])[ds.positions(ds.ids) % 3], name="animals"
    )
    other = dal.Session(animals, store=None, device="cpu")
    with pytest.raises(CheckpointMismatchError, match="allow_other_dataset=True"):
        other.load_model(path)
    assert other.model is None
    other.load_model(path, allow_other_dataset=True)  # the explicit override
    assert other.model is not None


def test_a_query_scores_the_pool_once(ds, tmp_path):
    """select(..., return_scores=True): the picks and the scores logged beside them come from
    one call of the strategy (it ran twice: select, then scores)."""
    from dal_widgets.strategies import register

    calls = []

    @register("counted_margin_test", needs={"probs"}, replace=True)
    def counted(probs):
        calls.append(len(probs))
        top2 = np.sort(probs, axis=1)[:, -2:]
        return top2[:, 0] - top2[:, 1]

    s = dal.Session(
        ds,
        strategy="counted_margin_test",
        store=None,
        device="cpu",
        train_config=FAST,
        retrain="manual",
    )
    s.label(ds.ids[:12].tolist(), oracle(ds, ds.ids[:12]))
    s.train(block=True)
    ids = s.query(4)
    assert calls == [len(ds)]
    logged = s.store.queries()[-1]["scores"]
    assert len(logged) == 4 and logged == sorted(logged, reverse=True)
    assert [r["rank"] for r in s.explain(ids)] == [1, 2, 3, 4]
    s.close()


def test_one_vocabulary_of_array_names():
    """The names strategies declare (the registry's ARRAYS) are exactly what the session
    computes: the model's arrays (training.MODEL_ARRAYS) and the raw features."""
    from dal_widgets.training import MODEL_ARRAYS

    assert set(dal.strategies.ARRAYS) == MODEL_ARRAYS | {"features"}


def test_train_after_stop_on_the_same_labels_fits_again(ds):
    """stop() then train() on unchanged labels: the new request is not taken for the
    cancelled fit (it used to return with no model and no error)."""
    slow = TrainConfig(steps=5_000, batch_size=8)
    s = dal.Session(ds, store=None, device="cpu", train_config=slow, retrain="manual")
    s.label(ds.ids[:9].tolist(), oracle(ds, ds.ids[:9]))
    started = []
    s.on("train_started", lambda **kw: started.append(kw))
    s.train()
    while not started:
        time.sleep(0.01)
    s.stop()
    fits = []
    s.on("trained", lambda **kw: fits.append(kw))
    s.train(block=True)  # the same labels: a new fit, not the cancelled one
    assert len(fits) == 1 and s.model is not None
    s.close()


def test_a_failing_evaluation_is_not_a_failed_fit(ds, monkeypatch):
    s = dal.Session(ds, store=None, device="cpu", train_config=FAST, retrain="manual")
    s.label(ds.ids[:9].tolist(), oracle(ds, ds.ids[:9]))

    def broken():
        raise MemoryError("evaluation ran out of memory (simulated)")

    monkeypatch.setattr(s, "evaluate", broken)
    s.train(block=True)  # does not raise: the fit itself succeeded
    assert s.model_version.version == 1 and s.train_error is None
    assert "evaluation ran out of memory" in s.observer_errors[-1]
    s.close()


def test_trained_observers_may_wait_and_load_without_deadlock(ds, tmp_path):
    s = dal.Session(ds, store=None, device="cpu", train_config=FAST, retrain="manual")
    s.label(ds.ids[:9].tolist(), oracle(ds, ds.ids[:9]))
    s.train(block=True)
    path = s.export_model(tmp_path / "m.pt")
    waited = []
    s.on("trained", lambda **kw: waited.append(s.wait(timeout=5)))
    s.label(ds.ids[9:12].tolist(), oracle(ds, ds.ids[9:12]))
    s.train()
    assert s.wait(timeout=60) and waited == [False]  # the trainer's thread cannot wait for itself
    slow = dal.Session(
        ds, store=None, device="cpu", train_config=TrainConfig(steps=50_000, max_epochs=100_000)
    )
    slow.label(ds.ids[:9].tolist(), oracle(ds, ds.ids[:9]))
    slow.train()
    time.sleep(0.3)
    slow.load_model(path)  # cancels the running fit instead of waiting for it
    assert not slow.training and slow.model_version.version == 1
    assert slow.evaluation is not None  # a loaded model is evaluated like a trained one
    s.close()
    slow.close()


# ---------------------------------------------------------------- the model after a restart
def _trained(ds, path, n=20, **kw):
    s = dal.Session(ds, store=path, device="cpu", train_config=FAST, **kw)
    ids = ds.ids[:n].tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    assert s.wait(60)
    return s


def test_the_model_comes_back_after_a_restart(ds, tmp_path):
    path = str(tmp_path / "m.db")
    s = _trained(ds, path)
    probs, evaluation = s.predict_proba(ds.ids[50:60]), s.evaluation
    s.close()
    assert (tmp_path / "m.db.dal" / "model.pt").is_file()
    again = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    assert again.model_version is not None and again.model_version.n_labels == 20
    assert not again.training  # the labels are those it saw: no refit
    np.testing.assert_allclose(again.predict_proba(ds.ids[50:60]), probs, atol=1e-6)
    assert again.evaluation["accuracy"] == evaluation["accuracy"]
    assert again.explain([ds.ids[50]])[0]["predicted"] is not None  # suggestions at once
    again.close()


def test_labels_changed_since_the_saved_model_start_a_refit(ds, tmp_path):
    path = str(tmp_path / "m.db")
    _trained(ds, path).close()
    manual = dal.Session(ds, store=path, device="cpu", train_config=FAST, retrain="manual")
    assert manual.model_version.n_labels == 20 and not manual.training
    manual.label(ds.ids[20:25].tolist(), oracle(ds, ds.ids[20:25]))
    manual.close()
    again = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    assert again.model_version.n_labels == 20  # the saved one, shown while the refit runs
    assert again.wait(60) and again.model_version.n_labels == 25
    again.close()
    third = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    assert third.model_version.n_labels == 25 and not third.training
    third.close()


@pytest.mark.parametrize("damage", ["missing", "garbage", "other classes"])
def test_a_missing_or_unusable_saved_model_costs_a_refit(ds, tmp_path, damage):
    path = str(tmp_path / "m.db")
    _trained(ds, path).close()
    saved = tmp_path / "m.db.dal" / "model.pt"
    if damage == "missing":
        saved.unlink()
    elif damage == "garbage":
        saved.write_bytes(b"not a torch file")
    else:
        other = dal.datasets.from_arrays(np.zeros((6, 2)), y=np.array(["x", "y"] * 3), name="other")
        o = dal.Session(other, store=str(tmp_path / "o.db"), device="cpu", train_config=FAST)
        o.label(other.ids.tolist(), oracle(other, other.ids))
        o.train(block=True)
        o.export_model(saved)
        o.close()
    if damage == "missing":
        again = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    else:
        with pytest.warns(dal.DalWarning, match="could not be loaded, so a new one"):
            again = dal.Session(ds, store=path, device="cpu", train_config=FAST)
    assert again.wait(60) and again.model_version.n_labels == 20 and again.train_error is None
    again.close()


def test_a_read_only_session_gets_the_saved_model_and_never_fits(ds, tmp_path):
    path = str(tmp_path / "m.db")
    writer = _trained(ds, path)
    writer.label(ds.ids[20:23].tolist(), oracle(ds, ds.ids[20:23]))  # newer than the model
    writer.wait(60)
    before = (tmp_path / "m.db.dal" / "model.pt").stat().st_mtime_ns
    ro = dal.Session(ds, store=path, device="cpu", read_only=True)
    assert ro.model_version is not None and not ro.training
    assert ro.explain([ds.ids[40]])[0]["predicted"] is not None
    ro.close()
    writer.close()
    assert (tmp_path / "m.db.dal" / "model.pt").stat().st_mtime_ns == before


# ---------------------------------------------------------------- one status, the first fit early
def test_status_says_training_while_a_fit_runs_and_idle_after_it(ds):
    s = dal.Session(ds, store=None, device="cpu", train_config=TrainConfig(steps=300))
    seen = []
    s.on("trained", lambda **kw: seen.append(("trained", s.status["worker"])))
    s.on("train_idle", lambda **kw: seen.append(("idle", s.status["worker"])))
    s.label(ds.ids[:12].tolist(), oracle(ds, ds.ids[:12]))
    s.train()
    assert s.status["worker"] == "training" and s.status["worker_text"].startswith("training")
    assert s.wait(60)
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # "trained" comes while the worker still holds the fit; "train_idle" tells views it ended
    assert seen[-1] == ("idle", "idle")
    status = s.status
    assert status["model_version"] == s.model_version.version and status["staleness"] == 0
    assert (status["labeled"], status["worker_text"], status["train_error"]) == (12, "idle", False)
    s.close()


def test_the_first_model_comes_after_five_labels_of_two_classes(ds):
    s = dal.Session(ds, store=None, device="cpu", train_config=FAST)
    first = ds.targets == ds.targets[0]
    s.label(ds.ids[first][:5].tolist(), oracle(ds, ds.ids[first][:5]))  # one class: too early
    assert not s.training and s.model_version is None
    other = ds.ids[~first][0]
    s.label(other, oracle(ds, [other])[0])
    assert s.wait(60) and s.model_version is not None and s.model_version.n_labels == 6
    s.close()
    manual = dal.Session(ds, store=None, device="cpu", train_config=FAST, retrain="manual")
    manual.label(ds.ids[:10].tolist(), oracle(ds, ds.ids[:10]))
    assert not manual.training and manual.model_version is None
    manual.close()


def test_a_restarted_ensemble_session_refits_for_its_committee(ds, tmp_path):
    path = str(tmp_path / "e.db")
    config = TrainConfig(steps=40, batch_size=32, ensemble_size=2)
    s = dal.Session(ds, strategy="vote_entropy", store=path, device="cpu", train_config=config)
    s.label(ds.ids[:20].tolist(), oracle(ds, ds.ids[:20]))
    s.train(block=True)
    s.close()
    again = dal.Session(ds, strategy="vote_entropy", store=path, device="cpu", train_config=config)
    assert again.model_version is not None  # the saved model shows at once
    assert again.wait(60)  # the refit gives the committee back
    assert again.compute_arrays({"member_probs"})["member_probs"].shape[1] == 2
    again.close()


def test_label_spreading_learns_from_the_pool_and_builds_its_graph_once(ds, monkeypatch):
    import dal_widgets.training._trainer as trainer_module

    built = []
    graph = trainer_module.SpreadGraph

    def counted(*args, **kwargs):
        built.append(1)
        return graph(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "SpreadGraph", counted)
    ids = np.concatenate([ds.ids[ds.targets == c][:1] for c in range(3)]).tolist()
    cfg = TrainConfig(steps=150, batch_size=16, label_spreading=True)
    s = dal.Session(ds, store=None, device="cpu", train_config=cfg, retrain="manual")
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    # One label per class: the spreading reaches every other pool sample of the easy blobs.
    assert s.pseudo_label_count == len(ds) - 3 and len(s.labels) == 3
    assert s.evaluate()["accuracy"] > 0.95
    more = [i for i in ds.ids[:10].tolist() if i not in ids]
    s.label(more, oracle(ds, more))
    s.train(block=True)
    assert s.pseudo_label_count == len(ds) - len(s.labels) and len(built) == 1
    s.close()


def test_a_spreading_model_votes_with_its_pool_and_brings_the_vote_back_after_a_restart(
    ds, tmp_path
):
    from dal_widgets.training import SpreadVote

    path = str(tmp_path / "vote.db")
    cfg = TrainConfig(steps=60, batch_size=16, label_spreading=True)
    s = dal.Session(ds, store=path, device="cpu", train_config=cfg, retrain="manual")
    ids = np.concatenate([ds.ids[ds.targets == c][:2] for c in range(3)]).tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    model = s.model
    # The vote's bank: the 6 labels and every pool sample the spreading reached.
    assert isinstance(model, SpreadVote) and model.bank.shape[0] == 6 + s.pseudo_label_count
    probs = s.predict_proba(ds.ids[:20].tolist())
    s.close()
    again = dal.Session(ds, store=path, device="cpu", train_config=cfg, retrain="manual")
    assert again.model.bank.shape == model.bank.shape
    np.testing.assert_allclose(again.predict_proba(ds.ids[:20].tolist()), probs, atol=1e-6)
    again.close()
    off = dal.Session(ds, store=path, device="cpu", retrain="manual",
                      train_config=cfg.with_(spread_vote=0.0))  # fmt: skip
    assert not isinstance(off.model, SpreadVote)  # the head's weights, without the vote
    assert off.model_version is not None
    off.close()


def test_auto_strategy_names_its_regime_in_the_round_history(ds):
    s = dal.Session(
        ds,
        store=None,
        device="cpu",
        strategy="auto",
        retrain="manual",
        train_config=TrainConfig(steps=30),
    )
    first = s.query(4)  # nothing labeled, no model: coverage
    s.label(first, oracle(ds, first))
    more = ds.ids[:12].tolist()
    s.label(more, oracle(ds, more))
    s.train(block=True)
    picked = s.query(4)  # 12+ labels of 3 classes, a model: margin
    assert [r.strategy for r in s.store.rounds()] == ["auto (coverage)", "auto (margin)"]
    assert s.explain(picked[:1])[0]["strategy"] == "auto (margin)"  # the "why" card's regime
    s.close()


def test_auto_counts_labels_not_skips(ds):
    s = dal.Session(ds, store=None, device="cpu", strategy="auto", retrain="manual",
                    train_config=TrainConfig(steps=30))  # fmt: skip
    ids = np.concatenate([ds.ids[ds.targets == c][:1] for c in range(3)]).tolist()
    s.label(ids, oracle(ds, ids))
    s.train(block=True)
    s.skip([i for i in ds.ids[:40].tolist() if i not in ids])  # 3 labels, 30+ skips
    s.query(2)
    assert s.store.rounds()[-1].strategy == "auto (coverage)"  # 3 labels < 3 per class
    s.close()
