"""The labeling widget, driven through its public methods and synced traits (no browser)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dal_widgets as dal
from dal_widgets.training import TrainConfig

FAST = TrainConfig(steps=30, batch_size=16)


@pytest.fixture
def ds():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    X = np.array([[0, 0], [4, 0], [0, 4]])[y] + rng.normal(scale=0.6, size=(300, 2))
    return dal.datasets.from_arrays(X, y=np.array(["ant", "bee", "cat"])[y], holdout=0.2)


@pytest.fixture
def session(ds, tmp_path):
    s = dal.Session(
        ds, store=str(tmp_path / "w.db"), device="cpu", train_config=FAST, retrain="manual"
    )
    yield s
    s.close()


def truth(ds, sid):
    return ds.classes[ds.targets[ds.positions([sid])[0]]]


def current(w):
    return w.current_id


def test_first_batch_is_shown_with_ids_and_payloads(session):
    w = dal.LabelingWidget(session, batch_size=6)
    assert len(w.items) == 6 and w.cursor == 0
    assert all(it["sample"]["type"] == "table" for it in w.items)
    assert [it["key"] for it in w.items] == [str(i) for i in session.pending]
    assert all(st["status"] == "pending" for st in w.states.values())
    assert w.classes == ["ant", "bee", "cat"]
    assert "Round 1" in w.message


def test_labeling_commits_marks_done_and_advances(session, ds):
    w = dal.LabelingWidget(session, batch_size=5)
    sid = current(w)
    w.label("bee")
    assert session.store.labels[sid] == "bee"  # committed
    assert w.states[str(sid)] == {"status": "done", "label": "bee", "flagged": False}
    assert w.cursor == 1
    w.label(2)  # class index
    assert session.labels[w.batch_ids[1]] == "cat"


def test_finishing_a_batch_shows_the_prefetched_one(session, ds, monkeypatch):
    w = dal.LabelingWidget(session, batch_size=5)
    first = w.batch_ids
    for _ in range(4):
        w.label(truth(ds, current(w)))
    assert w.wait_prefetch(30)  # prefetch started when the batch was nearly done
    assert w.prefetched is not None and not set(w.prefetched) & set(first)
    monkeypatch.setattr(
        session, "query", lambda *a, **k: pytest.fail("next batch was not prefetched")
    )
    w.label(truth(ds, current(w)))
    assert w.batch_ids != first and len(w.items) == 5
    assert all(st["status"] == "pending" for st in w.states.values())


def test_a_label_redraws_the_widget_once(session, ds):
    """The widget's own action redraws it; the session's echo of that label does not again
    (each label refreshed the state and the progress twice)."""
    w = dal.LabelingWidget(session, batch_size=5)
    seen = []
    w.observe(lambda change: seen.append(change["name"]), names=["progress"])
    w.label(truth(ds, current(w)))
    assert seen == ["progress"]
    outside = w.batch_ids[-1]
    session.label(outside, truth(ds, outside))  # labeled elsewhere: the tile follows once
    assert seen == ["progress", "progress"] and w.states[str(outside)]["status"] == "done"


def test_skip_flag_and_undo(session, ds):
    w = dal.LabelingWidget(session, batch_size=4)
    a = current(w)
    w.skip()
    assert w.states[str(a)]["status"] == "skipped" and a in session.store.marked("skip")
    b = current(w)
    w.flag()
    assert w.states[str(b)]["flagged"] and w.cursor == 1  # flagging does not move on
    w.label("ant")
    assert w.undo() == [b]
    assert w.states[str(b)]["status"] == "pending" and b not in session.labels
    assert w.items[w.cursor]["key"] == str(b)


def test_undo_brings_back_a_sample_from_the_previous_batch(session, ds):
    w = dal.LabelingWidget(session, batch_size=2, prefetch=False)
    first = w.batch_ids
    w.label("ant")
    w.label("bee")  # finishes the batch: the next one is shown
    assert set(w.batch_ids).isdisjoint(first)
    assert w.undo() == [first[1]]
    assert w.items[0]["key"] == str(first[1]) and w.cursor == 0
    assert w.states[str(first[1])]["status"] == "pending"


def test_suggestions_and_why_card_after_training(session, ds):
    start = ds.ids[:60].tolist()
    session.label(start, [truth(ds, i) for i in start])
    session.train(block=True)
    session.strategy = "margin"
    w = dal.LabelingWidget(session, batch_size=5)
    it, sid = w.items[0], w.batch_ids[0]
    assert it["suggestion"] in ds.classes and 0 < it["prob"] <= 1
    assert len(it["probs"]) == 3 and abs(sum(it["probs"]) - 1) < 1e-5
    assert it["strategy"] == "margin" and it["rank"] == 1 and it["candidates"] == 240 - 60
    assert it["score"] is not None
    w.accept_suggestion()
    hist = session.store.history(sid)
    assert hist[-1]["source"] == "suggestion" and hist[-1]["new"] == it["suggestion"]
    assert w.progress["model_version"] == 1 and w.progress["staleness"] == 1


def test_accept_without_model_is_a_shown_error(session):
    w = dal.LabelingWidget(session, batch_size=3)
    with pytest.raises(ValueError, match="no model suggestion"):
        w.accept_suggestion()
    assert "no model suggestion" in w.error and "Traceback" in w.errors[-1]
    w.label("ant")  # the widget keeps working, and clears the error
    assert w.error == ""


def test_frontend_messages_dispatch_and_ack(session):
    w = dal.LabelingWidget(session, batch_size=3)
    key = w.items[0]["key"]
    w.receive({"action": "label", "key": key, "label": "cat", "seq": 7}, [])
    assert w.ack == 7 and w.states[key]["status"] == "done"
    w.receive({"action": "label", "key": w.items[1]["key"], "label": "<b>nope</b>", "seq": 8}, [])
    assert (
        w.ack == 8 and "'labels'" in w.error and "<b>nope</b>" in w.error
    )  # shown as text by the view
    w.receive({"action": "view", "seq": 9}, [])
    assert w.view == "single"
    w.receive({"action": "undo", "seq": 10}, [])
    assert w.states[key]["status"] == "pending"
    w.receive({"action": "rm -rf", "seq": 11}, [])  # unknown actions are ignored
    assert w.ack == 10


def test_move_select_view_and_add_class(session):
    w = dal.LabelingWidget(session, batch_size=4)
    w.move(2)
    assert w.cursor == 2
    w.move(10)
    assert w.cursor == 3
    w.select(w.batch_ids[1])
    assert w.cursor == 1
    with pytest.raises(KeyError, match="not on screen"):
        w.select(10**6)
    w.toggle_view()
    assert w.view == "single"
    with pytest.raises(ValueError, match="'view'"):
        w.toggle_view("carousel")
    w.add_class("dog")
    assert w.classes == ["ant", "bee", "cat", "dog"] and session.classes[-1] == "dog"
    w.label("dog")
    assert "dog" in session.labels.values()


def test_resume_shows_the_unfinished_batch(ds, tmp_path):
    path = str(tmp_path / "r.db")
    s = dal.Session(ds, store=path, device="cpu", train_config=FAST, retrain="manual")
    w = dal.LabelingWidget(s, batch_size=4, prefetch=False)
    keys = [it["key"] for it in w.items]
    w.label("ant")
    s.close()
    s2 = dal.Session(ds, store=path, device="cpu", train_config=FAST, retrain="manual")
    w2 = dal.LabelingWidget(s2, batch_size=4)
    assert [it["key"] for it in w2.items] == keys[1:]
    s2.close()


def test_text_and_image_payloads():
    texts = dal.datasets.texts(["<img src=x onerror=alert(1)>", "plain"], classes=["a", "b"])
    s = dal.Session(texts, store=None, device="cpu", retrain="manual")
    w = dal.LabelingWidget(s, batch_size=2)
    got = {it["sample"]["text"] for it in w.items}
    assert got == {"<img src=x onerror=alert(1)>", "plain"}  # raw text; the view uses textContent
    s.close()
    digits = dal.datasets.digits()
    s = dal.Session(digits, store=None, device="cpu", retrain="manual")
    w = dal.LabelingWidget(s, batch_size=2)
    assert w.items[0]["sample"]["src"].startswith("data:image/png;base64,")
    w.zoom()
    assert w.zoomed["key"] == w.items[0]["key"] and len(w.zoomed["sample"]["src"]) > len(
        w.items[0]["sample"]["src"]
    )
    s.close()


def test_labels_given_in_code_show_on_the_tiles(session):
    w = dal.LabelingWidget(session, batch_size=4)
    sid = w.batch_ids[2]
    session.label(sid, "cat")
    assert w.states[str(sid)]["status"] == "done" and w.progress["labeled"] == 1
    session.undo()
    assert w.states[str(sid)]["status"] == "pending"


def test_retrain_after_each_batch(ds):
    s = dal.Session(ds, store=None, device="cpu", train_config=FAST, retrain="batch")
    w = dal.LabelingWidget(s, batch_size=3, prefetch=False)
    for _ in range(3):
        w.label("ant")
    assert s.wait(timeout=60) and s.model_version is not None and s.model_version.n_labels == 3
    s.close()


def test_bad_arguments(session):
    with pytest.raises(TypeError, match="'session'"):
        dal.LabelingWidget("not a session")
    with pytest.raises(ValueError, match="'batch_size'"):
        dal.LabelingWidget(session, batch_size=0)


# ---------------------------------------------------------------------------- in a real browser
LABELER_CELL = (
    "import json\n"
    "import dal_widgets as dal\n"
    "ds = dal.datasets.digits()\n"
    "s = dal.Session(ds, store='keys.db', device='cpu', retrain='manual')\n"
    "w = dal.LabelingWidget(s, batch_size=10, prefetch=False)\n"
    "w"
)


@pytest.mark.e2e
def test_keyboard_labels_ten_digits_into_the_store_and_undo(lab):
    import sqlite3

    from _lab import wait_until
    from playwright.sync_api import expect

    page = lab.open_notebook([LABELER_CELL])
    root = page.locator(".dal-labeler")
    tiles = root.locator(".dal-tile[data-sample-id]")
    expect(tiles).to_have_count(10)
    ids = json.loads(lab.execute("print(json.dumps([str(i) for i in w.batch_ids]))"))
    truth = json.loads(
        lab.execute(
            "print(json.dumps([ds.classes[ds.targets[ds.positions([i])[0]]] for i in w.batch_ids]))"
        )
    )
    assert [tiles.nth(i).get_attribute("data-sample-id") for i in range(10)] == ids
    root.locator(".dal-progress-text").click()  # focus without selecting a tile
    for key in truth:  # digits: the key is the class name
        page.keyboard.press(key)
        page.wait_for_timeout(150)
    page.keyboard.press("m")  # JupyterLab's "to markdown" must not reach the notebook

    def stored():
        with sqlite3.connect(lab.root_dir / "keys.db") as conn:
            return dict(
                conn.execute("SELECT sample_id, value FROM state WHERE field = 'label'").fetchall()
            )

    wait_until(
        lambda: len(stored()) == 10, timeout=20, what="10 labels in the store", details=stored
    )
    assert {str(k): v for k, v in stored().items()} == dict(zip(ids, truth))
    assert page.locator(".jp-MarkdownCell").count() == 0
    # Finishing the batch showed the next one at once.
    wait_until(
        lambda: tiles.nth(0).get_attribute("data-sample-id") not in ids,
        timeout=20,
        what="the next batch",
    )
    expect(root.locator(".dal-tile[data-status='pending']")).to_have_count(10)

    page.keyboard.press("Backspace")  # undo the last label: its sample comes back into view
    wait_until(lambda: len(stored()) == 9, timeout=20, what="the undo in the store", details=stored)
    expect(tiles.first).to_have_attribute("data-sample-id", ids[-1])
    expect(tiles.first).to_have_attribute("data-status", "pending")
    page.keyboard.press(truth[-1])
    wait_until(
        lambda: len(stored()) == 10, timeout=20, what="the relabel in the store", details=stored
    )
    lab.save_screenshot(page, "labeler-after-undo")


@pytest.mark.e2e
def test_untrusted_text_and_class_names_stay_inert(lab):
    from playwright.sync_api import expect

    payload = '<img src=x onerror="window.__pwned=1">'
    page = lab.open_notebook(
        [
            "import dal_widgets as dal\n"
            f"ds = dal.datasets.texts([{payload!r}, 'plain text'], classes=['<b onmouseover=\"window.__pwned=2\">bold</b>', 'ok'])\n"
            "s = dal.Session(ds, store=None, device='cpu', retrain='manual')\n"
            "w = dal.LabelingWidget(s, batch_size=2)\n"
            "w"
        ]
    )
    root = page.locator(".dal-labeler")
    expect(root.locator(".dal-text").filter(has_text=payload)).to_have_count(1)
    expect(root.locator(".dal-class").first).to_contain_text(
        '<b onmouseover="window.__pwned=2">bold</b>'
    )
    root.locator(".dal-class").first.hover()
    assert root.locator(".dal-text img, .dal-class b").count() == 0
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None


@pytest.mark.slow
def test_1000_labels_through_the_widget_while_training_and_projecting(tmp_path):
    from dal_widgets.widgets.embedding import EmbeddingPlot

    ds = dal.datasets.digits()
    s = dal.Session(
        ds,
        store=str(tmp_path / "c.db"),
        device="cpu",
        retrain=100,
        train_config=TrainConfig(steps=150, batch_size=32),
    )
    w = dal.LabelingWidget(s, batch_size=50)
    s.map("pca", source="embeddings")  # the session's map service, made with options
    plot = EmbeddingPlot(s, labeler=w, map_method="pca")
    given = {}
    fits_seen = set()
    seq = 0
    while len(given) < 1000:
        item, sid = w.items[w.cursor], w.current_id
        assert sid not in given, "the widget offered a labeled sample again"
        label = ds.classes[ds.targets[ds.positions([sid])[0]]]
        seq += 1
        w.receive({"action": "label", "key": item["key"], "label": label, "seq": seq}, [])
        assert w.ack == seq
        given[sid] = label
        if s.training:
            fits_seen.add(len(given) // 100)
    s.wait(120)
    plot.projector.wait(60)
    assert s.labels == given  # none lost, none changed
    events = [h for h in s.store.history() if h["kind"] == "label"]
    assert len(events) == 1000 and len({h["sample_id"] for h in events}) == 1000  # none doubled
    assert len(fits_seen) >= 3 and s.model_version.version >= 5  # it really trained meanwhile
    assert (
        w.errors == [] and plot.errors == [] and s.train_error is None and s.observer_errors == []
    )
    assert plot.projector.error is None and plot.projector.current().source == "embeddings"
    s.close()


def multi_ds():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 2] > 0.5], 1).astype(np.uint8)
    return dal.datasets.from_arrays(X, y=Y, classes=["red", "round", "rare"], holdout=0.2)


def test_multi_label_mode_labels_sets_and_suggests_sets():
    ds = multi_ds()
    s = dal.Session(
        ds,
        strategy="multilabel_entropy",
        store=None,
        device="cpu",
        retrain="manual",
        train_config=TrainConfig(steps=150),
    )
    w = dal.LabelingWidget(s, batch_size=4, prefetch=False)
    assert w.multi_label
    first = w.batch_ids[0]
    w.receive({"action": "label", "key": str(first), "label": ["rare", "red"], "seq": 1}, [])
    assert s.labels[first] == ("red", "rare") and list(w.states[str(first)]["label"]) == [
        "red",
        "rare",
    ]
    w.label([])  # none of the classes
    assert s.labels[w.batch_ids[1]] == ()
    ids = ds.ids[:60].tolist()
    s.label(ids, ds.targets[ds.positions(ids)])
    s.train(block=True)
    w.next_batch()
    it, sid = w.items[0], w.batch_ids[0]
    assert isinstance(it["suggestion"], list) and set(it["suggestion"]) <= {"red", "round", "rare"}
    assert len(it["probs"]) == 3 and 0.5 <= it["prob"] <= 1.0
    w.accept_suggestion()
    assert s.labels[sid] == tuple(it["suggestion"])
    assert 0.0 <= s.evaluate()["accuracy"] <= 1.0 and s.evaluate()["metric"] == "micro-F1"
    s.close()


@pytest.mark.e2e
def test_multi_label_keys_toggle_classes_and_enter_saves(lab):
    import sqlite3

    from _lab import wait_until
    from playwright.sync_api import expect

    page = lab.open_notebook(
        [
            "import numpy as np, dal_widgets as dal\n"
            "X = np.random.default_rng(0).normal(size=(40, 3))\n"
            "ds = dal.datasets.from_arrays(X, y=[['a']] * 40, classes=['a', 'b', 'c'])\n"
            "s = dal.Session(ds, store='multi.db', device='cpu', retrain='manual')\n"
            "w = dal.LabelingWidget(s, batch_size=5, prefetch=False)\n"
            "w",
        ]
    )
    root = page.locator(".dal-labeler")
    expect(root.locator(".dal-tile")).to_have_count(5)
    first = root.locator(".dal-tile").first.get_attribute("data-sample-id")
    root.locator(".dal-progress-text").click()
    for key in ("a", "c", "b", "b"):  # toggle a, c, b, then b off again
        page.keyboard.press(key)
        page.wait_for_timeout(100)
    expect(root.locator(".dal-class.dal-active")).to_have_count(2)
    page.keyboard.press("Enter")

    def stored():
        with sqlite3.connect(lab.root_dir / "multi.db") as conn:
            return dict(
                conn.execute("SELECT sample_id, value FROM state WHERE field = 'label'").fetchall()
            )

    wait_until(lambda: len(stored()) == 1, timeout=20, what="the set in the store", details=stored)
    assert stored() == {int(first): '["a", "c"]'}
    expect(root.locator(f".dal-tile[data-sample-id='{first}'] .dal-badge")).to_contain_text("a, c")
