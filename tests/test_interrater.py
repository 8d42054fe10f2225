from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

import dal_widgets as dal
from dal_widgets.interrater import fleiss_kappa, krippendorff_alpha

# Fleiss (1971), as tabulated in most textbooks: 10 subjects, 14 raters, 5 categories.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the nominal example:
# 4 observers, 12 units, missing values as None; alpha = 0.743.
KRIPPENDORFF = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def test_fleiss_kappa_matches_the_worked_example():
    kappa, per = fleiss_kappa(FLEISS_TABLE)
    assert kappa == pytest.approx(0.210, abs=5e-4)
    # Per-category kappas of the same example (Fleiss 1971, section 4), recomputed by hand
    # from the table: 1 - sum x(14 - x) / (10 * 14 * 13 * p q).
    t = np.array(FLEISS_TABLE, float)
    p = t.sum(0) / 140
    by_hand = 1 - (t * (14 - t)).sum(0) / (10 * 14 * 13 * p * (1 - p))
    assert np.allclose(per, by_hand)
    # Fleiss' identity: the overall kappa is the p q-weighted mean of the per-category ones.
    assert kappa == pytest.approx(float((p * (1 - p) * per).sum() / (p * (1 - p)).sum()))
    assert np.allclose(fleiss_kappa([[3, 0], [0, 3], [3, 0]])[1], 1.0)  # all agree


def test_krippendorff_alpha_matches_the_worked_example():
    ratings = [
        (unit, who, value)
        for who, values in KRIPPENDORFF.items()
        for unit, value in enumerate(values)
        if value is not None
    ]
    a = dal.agreement(ratings)
    assert a.alpha == pytest.approx(0.743, abs=5e-4)
    assert a.n_items == 11 and a.n_single == 1  # unit 12 has one value only


def test_pairwise_cohen_kappa_equals_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 300)
    who = {name: np.where(rng.random(300) < acc, truth, rng.integers(0, 4, 300))
           for name, acc in (("ann", 0.9), ("bo", 0.7), ("cy", 0.5))}  # fmt: skip
    seen = {name: rng.random(300) < 0.8 for name in who}  # each labels about 80% of items
    ratings = [
        (i, name, f"class {who[name][i]}") for name in who for i in np.flatnonzero(seen[name])
    ]
    a = dal.agreement(ratings)
    assert len(a.pairs) == 3
    for pair in a.pairs:
        both = seen[pair["a"]] & seen[pair["b"]]
        assert pair["items"] == both.sum()
        ref = cohen_kappa_score(who[pair["a"]][both], who[pair["b"]][both])
        assert pair["kappa"] == pytest.approx(ref, abs=1e-12)
    by_pair = {(p["a"], p["b"]): p["kappa"] for p in a.pairs}
    assert by_pair[("ann", "bo")] > by_pair[("bo", "cy")]  # better annotators agree more
    assert set(a.per_class) == {f"class {c}" for c in range(4)}


def test_newest_label_of_an_annotator_counts_and_bad_input_is_named():
    a = dal.agreement({"x": {"ann": "cat", "bo": "dog"}, "y": {"ann": "cat", "bo": "cat"}})
    b = dal.agreement([("x", "ann", "dog"), ("x", "ann", "cat"), ("x", "bo", "dog"),
                       ("y", "ann", "cat"), ("y", "bo", "cat")])  # fmt: skip
    assert a.pairs == b.pairs and a.alpha == b.alpha
    assert (
        "Fleiss kappa" in repr(a)
        and "&lt;b&gt;" in dal.agreement([("x", "<b>", "cat"), ("x", "bo", "cat")])._repr_html_()
    )
    with pytest.raises(TypeError, match="'ratings'"):
        dal.agreement("alice")
    with pytest.raises(TypeError, match="'ratings'"):
        dal.agreement([("x", "ann")])
    with pytest.raises(ValueError, match="'ratings'"):
        dal.agreement([])
    assert np.isnan(krippendorff_alpha([[1, 0], [0, 1]]))  # no item has two ratings
