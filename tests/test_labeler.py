"""The labeling widget, driven through its public methods and synced traits (no browser)."""

from __future__ import annotations

import json
import time

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


# ---------------------------------------------------------------------------- reviews
@pytest.fixture
def trained(session, ds):
    """The session with 60 true labels and a model trained on them."""
    start = ds.ids[:60].tolist()
    session.label(start, [truth(ds, i) for i in start])
    session.train(block=True)
    return session


def unlabeled(session, n):
    return [i for i in session.dataset.ids.tolist() if i not in session.labels][:n]


def test_review_pages_every_sample_once_and_goes_back_to_the_batch(session):
    w = dal.LabelingWidget(session, batch_size=12, prefetch=False)
    batch = w.batch_ids
    w.label("ant")
    ids = [i for i in unlabeled(session, 200) if i not in batch][:158]
    assert w.review(ids, title="from the map") == ids  # no model yet: the given order
    assert w.reviewing == {"title": "from the map", "page": 1, "pages": 14, "n": 158}
    assert w.message.startswith("Review: 158 samples from the map · page 1/14")
    assert "N/P pages" in w.message and "B back to the batch" in w.message
    assert w.review_info["page"] == 1 and w.review_info["pages"] == 14
    assert w.previous_page() == ids[:12] and "first page" in w.message
    seen = [w.batch_ids]
    for page in range(2, 15):
        seen.append(w.next_page())
        assert w.reviewing["page"] == page and f"page {page}/14" in w.message
    assert [len(p) for p in seen] == [12] * 13 + [2]
    assert [i for p in seen for i in p] == ids  # every id exactly once, in order
    assert w.previous_page() == ids[144:156]
    w.next_page()
    w.label("bee", sample_id=ids[-2])  # the page's last pending tiles: no new batch comes
    w.label("bee")
    assert w.batch_ids == ids[156:] and "done" in w.message
    assert w.next_page() == batch  # after the last page: back to the batch
    assert w.reviewing is None and w.review_info == {} and "Back to the batch" in w.message
    assert w.states[str(batch[0])]["status"] == "done" and w.current_id == batch[1]


def test_show_keeps_the_given_order(trained):
    w = dal.LabelingWidget(trained, batch_size=5)
    ids = unlabeled(trained, 3)[::-1]
    w.show(ids)
    assert w.batch_ids == ids and w.reviewing["pages"] == 1
    assert "in the given order" in w.message


def test_review_groups_by_suggestion_least_sure_first(trained):
    w = dal.LabelingWidget(trained, batch_size=12)
    ids = unlabeled(trained, 100)
    order = w.review(ids)
    assert sorted(order) == sorted(ids) and order != ids
    probs = trained.predict_proba(order)
    predicted, sure = probs.argmax(axis=1), probs.max(axis=1)
    assert (np.diff(predicted) >= 0).all()  # grouped, in class order
    for c in set(predicted.tolist()):
        assert (np.diff(sure[predicted == c]) >= 0).all()  # least sure first
    assert [it["suggestion"] for it in w.items] == [trained.classes[c] for c in predicted[:12]]
    assert "grouped by suggestion" in w.message and "Shift+Enter accepts the page" in w.message
    assert w.review(ids, order="given") == ids


def test_accept_page_is_one_action_that_one_undo_reverts(trained):
    w = dal.LabelingWidget(trained, batch_size=12, prefetch=False)
    ids = w.review(unlabeled(trained, 30))
    page = w.batch_ids
    hand, skipped = page[1], page[2]
    other = next(c for c in trained.classes if c != w.items[1]["suggestion"])
    w.label(other, sample_id=hand)  # a per-tile override keeps its label
    w.skip(sample_id=skipped)
    suggested = {str(i): it["suggestion"] for i, it in zip(page, w.items)}
    accepted = w.accept_page()
    assert accepted == [i for i in page if i not in (hand, skipped)]
    assert all(trained.labels[i] == suggested[str(i)] for i in accepted)
    assert trained.labels[hand] == other and skipped not in trained.labels
    events = [h for h in trained.store.history() if h["sample_id"] in set(accepted)]
    assert len({h["action_id"] for h in events}) == 1 and {h["source"] for h in events} == {
        "suggestion"
    }
    assert w.batch_ids == page and w.reviewing["page"] == 1  # the page does not turn
    assert "Accepted 10 suggestions" in w.message
    assert w.accept_page() == [] and "Nothing to accept" in w.message
    assert sorted(w.undo()) == sorted(accepted)  # one Backspace reverts the page
    assert not set(accepted) & set(trained.labels) and trained.labels[hand] == other
    assert all(w.states[str(i)]["status"] == "pending" for i in accepted)
    assert w.batch_ids == page and ids[:12] == page
    only = accepted[:2]  # the view sends the tiles the person saw
    assert w.accept_page(sample_ids=only) == only
    with pytest.raises(KeyError, match="not on screen"):
        w.accept_page(sample_ids=[ids[-1]])


def test_accept_page_on_a_batch_keeps_it_on_screen(trained):
    w = dal.LabelingWidget(trained, batch_size=6, prefetch=False)
    batch = w.batch_ids
    assert w.accept_page() == batch and w.batch_ids == batch  # no unseen batch comes
    assert "N next batch" in w.message
    assert w.next_batch() != batch


def test_review_labeled_filters(trained, ds):
    s = trained
    w = dal.LabelingWidget(s, batch_size=12, prefetch=False)
    batch = w.batch_ids
    labeled = list(s.labels)
    bees = w.review_labeled(label="bee")
    assert sorted(bees) == sorted(i for i in labeled if s.labels[i] == "bee")
    p_bee = s.predict_proba(bees)[:, s.classes.index("bee")]
    assert (np.diff(p_bee) >= 0).all()  # the most doubtful labels first
    assert all(w.states[str(i)]["status"] == "done" for i in w.batch_ids)
    assert "labeled bee" in w.message and "relabels" in w.message
    everything = w.review_labeled()
    assert sorted(everything) == sorted(labeled)

    # a class key relabels a labeled tile, one Backspace takes that back
    first = w.current_id
    old = s.labels[first]
    new = next(c for c in s.classes if c != old)
    w.label(new)
    assert s.labels[first] == new and w.states[str(first)]["label"] == new
    assert w.cursor == 1  # the cursor walks the labeled tiles
    assert w.undo() == [first] and s.labels[first] == old

    bob = unlabeled(s, 4)
    s.store.label(bob, ["ant"] * 4, annotator="bob")
    assert sorted(w.review_labeled(annotator="bob")) == sorted(bob)
    assert w.review_labeled(annotator="bob", label="ant") == w.batch_ids

    # likely label errors: the (unchanged) model predicts the true class for these
    predicted = s.predict_proba(labeled).argmax(axis=1)
    right = [i for i, c in zip(labeled, predicted) if s.classes[c] == s.labels[i]]
    wrong = right[:3]
    s.label(wrong, [next(c for c in s.classes if c != s.labels[i]) for i in wrong])
    flagged_wrong = w.review_labeled(disagree=True)
    assert set(wrong) <= set(flagged_wrong)
    sure = s.predict_proba(flagged_wrong).max(axis=1)
    assert (np.diff(sure) <= 0).all()  # the model's surest disagreements first
    assert "disagrees" in w.message

    skip = unlabeled(s, 2)
    bee = next(i for i in labeled if s.labels[i] == "bee")
    s.skip(skip)
    s.flag([bee, skip[0]])
    assert sorted(w.review_labeled(skipped=True)) == sorted(skip)
    shown = w.current_id
    assert w.states[str(shown)]["status"] == "skipped"
    w.label("cat")  # labeling a skipped sample clears the skip
    assert s.labels[shown] == "cat" and w.states[str(shown)]["status"] == "done"
    assert sorted(w.review_labeled(flagged=True)) == sorted([bee, skip[0]])
    assert w.review_labeled(flagged=True, label="bee") == [bee]
    assert w.end_review() == batch and w.reviewing is None


def test_review_errors_name_the_parameter(trained):
    w = dal.LabelingWidget(trained, batch_size=4)
    with pytest.raises(ValueError, match="'order' parameter of LabelingWidget.review .*'chaos'"):
        w.review(unlabeled(trained, 3), order="chaos")
    with pytest.raises(TypeError, match="'title' parameter of LabelingWidget.review .*Got 5"):
        w.review(unlabeled(trained, 3), title=5)
    with pytest.raises(ValueError, match="'ids' parameter .*at least one sample id"):
        w.review([])
    with pytest.raises(KeyError):
        w.review([10**6])
    with pytest.raises(ValueError, match="'label' parameter .*'ant', 'bee', 'cat'. Got 'dog'"):
        w.review_labeled(label="dog")
    with pytest.raises(TypeError, match="'annotator' parameter .*a str.*Got 3 instead"):
        w.review_labeled(annotator=3)
    with pytest.raises(ValueError, match="'annotator' parameter .*Got 'nobody'"):
        w.review_labeled(annotator="nobody")
    with pytest.raises(TypeError, match="'flagged' parameter .*a bool"):
        w.review_labeled(flagged="yes")
    with pytest.raises(ValueError, match="must match at least one sample. Got skipped=True"):
        w.review_labeled(skipped=True)
    with pytest.raises(ValueError, match="no review is open"):
        w.next_page()
    assert "no review is open" in w.error and w.reviewing is None
    assert w.end_review() == w.batch_ids  # nothing to end: nothing happens


def test_disagree_needs_a_model(session):
    w = dal.LabelingWidget(session, batch_size=4)
    w.label("ant")
    with pytest.raises(ValueError, match="'disagree' parameter .*trained model"):
        w.review_labeled(disagree=True)


def test_next_batch_and_prefetch_during_a_review_keep_it(session, ds):
    w = dal.LabelingWidget(session, batch_size=5)
    first = w.batch_ids
    for _ in range(4):  # nearly done: the next batch is prefetched in the background
        w.label(truth(ds, current(w)))
    ids = unlabeled(session, 8)
    ids = [i for i in ids if i not in first][:6]
    w.review(ids, title="from the map")
    assert w.wait_prefetch(30)
    assert w.batch_ids == ids[:5]  # the prefetch did not replace the page
    w.label("cat")
    assert w.end_review() == first and w.current_id == first[4]  # the batch, unfinished
    w.review(ids)
    nxt = w.next_batch()  # kept for when the review ends
    assert w.batch_ids == ids[:5] and w.reviewing["n"] == 6 and "B shows them" in w.message
    w.label("bee")
    assert session.labels[ids[0]] == "cat" and session.labels[ids[1]] == "bee"
    assert w.end_review() == nxt and w.batch_ids == nxt
    assert all(session.labels[i] == truth(ds, i) for i in first[:4])  # no label lost


def test_new_model_refreshes_the_review_tiles(session, ds):
    w = dal.LabelingWidget(session, batch_size=4, prefetch=False)
    start = ds.ids[:60].tolist()
    session.label(start, [truth(ds, i) for i in start])
    w.review(unlabeled(session, 6))
    assert all(it["suggestion"] is None for it in w.items)
    session.train(block=True)
    deadline = time.monotonic() + 30
    while w.items[0]["suggestion"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(it["suggestion"] in session.classes for it in w.items)
    assert w.reviewing["page"] == 1 and len(w.accept_page()) == 4


def test_review_frontend_messages_round_trip(trained):
    w = dal.LabelingWidget(trained, batch_size=4, prefetch=False)
    batch = w.batch_ids
    ids = w.review([i for i in unlabeled(trained, 20) if i not in batch][:10])
    w.receive({"action": "next", "seq": 1}, [])  # N in a review turns the page
    assert w.ack == 1 and w.batch_ids == ids[4:8]
    w.receive({"action": "page", "delta": -1, "seq": 2}, [])
    assert w.ack == 2 and w.batch_ids == ids[:4]
    w.receive({"action": "page", "delta": 1, "seq": 3}, [])
    assert w.ack == 3 and w.reviewing["page"] == 2
    keys = [it["key"] for it in w.items]
    w.receive({"action": "accept_page", "keys": [*keys[:3], "gone"], "seq": 4}, [])
    assert w.ack == 4 and [w.states[k]["status"] for k in keys] == ["done"] * 3 + ["pending"]
    w.receive({"action": "undo", "seq": 5}, [])
    assert w.ack == 5 and all(w.states[k]["status"] == "pending" for k in keys)
    w.receive({"action": "accept_page", "seq": 6}, [])
    assert w.ack == 6 and all(w.states[k]["status"] == "done" for k in keys)
    w.receive({"action": "end_review", "seq": 7}, [])
    assert w.ack == 7 and w.reviewing is None and w.batch_ids == batch
    w.receive({"action": "page", "delta": 1, "seq": 8}, [])  # no review: nothing happens
    assert w.ack == 8 and w.batch_ids == batch and w.error == ""
    w.receive({"action": "next", "seq": 9}, [])  # N outside a review: the next batch
    assert w.ack == 9 and w.message.startswith(f"Round {trained.round}: 4 samples")


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


REVIEW_CELL = (
    "import json\n"
    "import ipywidgets as W\n"
    "import dal_widgets as dal\n"
    "from dal_widgets.training import TrainConfig\n"
    "ds = dal.datasets.digits()\n"
    "s = dal.Session(ds, store='review.db', device='cpu', retrain='manual',\n"
    "                train_config=TrainConfig(steps=60))\n"
    "start = ds.ids[:150].tolist()\n"
    "s.label(start, [ds.classes[t] for t in ds.targets[ds.positions(start)]])\n"
    "s.train(block=True)\n"
    "w = dal.LabelingWidget(s, batch_size=12, prefetch=False)\n"
    "ids = [i for i in ds.ids.tolist() if i not in s.labels and i not in w.batch_ids][:30]\n"
    "button = W.Button(description='Label these')  # as the map's button does\n"
    "button.on_click(lambda _b: w.review(ids, title='from the map'))\n"
    "W.VBox([button, w])"
)


@pytest.mark.e2e
def test_review_takes_the_focus_and_its_keys_page_accept_and_go_back(lab):
    import sqlite3

    from _lab import wait_until
    from playwright.sync_api import expect

    page = lab.open_notebook([REVIEW_CELL])
    root = page.locator(".dal-labeler")
    tiles = root.locator(".dal-tile[data-sample-id]")
    expect(tiles).to_have_count(12)
    batch = [tiles.nth(i).get_attribute("data-sample-id") for i in range(12)]
    cells = len(lab.cell_types(page))
    page.get_by_role("button", name="Label these").click()  # the focus is on that button
    review_text = root.locator(".dal-review-text")
    expect(review_text).to_contain_text("Review: 30 samples from the map \u00b7 page 1/3")
    expect(root.locator(".dal-message")).to_contain_text("Shift+Enter accepts the page")
    wait_until(
        lambda: page.evaluate(
            "document.querySelector('.dal-labeler').contains(document.activeElement)"
        ),
        timeout=10,
        what="the labeler to take the keyboard focus",
    )
    first_page = [tiles.nth(i).get_attribute("data-sample-id") for i in range(12)]
    assert not set(first_page) & set(batch)

    def stored():
        with sqlite3.connect(lab.root_dir / "review.db") as conn:
            return conn.execute("SELECT count(*) FROM state WHERE field = 'label'").fetchone()[0]

    page.keyboard.press("Shift+Enter")  # the whole page, as one action
    wait_until(lambda: stored() == 162, timeout=20, what="12 accepted labels", details=stored)
    expect(root.locator(".dal-tile[data-status='done']")).to_have_count(12)
    assert len(lab.cell_types(page)) == cells  # JupyterLab did not run the cell
    lab.save_screenshot(page, "labeler-review-accepted")
    page.keyboard.press("n")
    expect(review_text).to_contain_text("page 2/3")
    expect(tiles.first).not_to_have_attribute("data-sample-id", first_page[0])
    page.keyboard.press("p")
    expect(review_text).to_contain_text("page 1/3")
    page.keyboard.press("Backspace")  # one undo takes the whole page back
    wait_until(lambda: stored() == 150, timeout=20, what="the undo of the page", details=stored)
    expect(root.locator(".dal-tile[data-status='pending']")).to_have_count(12)
    page.keyboard.press("b")
    expect(root.locator(".dal-review")).to_be_hidden()
    expect(tiles.first).to_have_attribute("data-sample-id", batch[0])
    assert page.evaluate("document.querySelector('.dal-labeler').contains(document.activeElement)")


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
            "s = dal.Session(ds, strategy='multilabel_entropy', store='multi.db', device='cpu',\n"
            "                retrain='manual')\n"
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
