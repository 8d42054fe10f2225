"""Tests of the strategy library: hand-computed cases, naive references, and the contract.

Tiny seeded arrays throughout; the naive references (textbook k-center greedy, explicit
gradient embeddings, brute-force joint entropies) are written out here, independently of the
library, and the library must agree with them.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dal_widgets import strategies

pytestmark = pytest.mark.filterwarnings("error")

REQUIRED = {
    "random": set(),
    "least_confidence": {"probs"},
    "margin": {"probs"},
    "ratio": {"probs"},
    "entropy": {"probs"},
    "bald": {"mc_probs"},
    "variation_ratios": {"mc_probs"},
    "mean_std": {"mc_probs"},
    "max_entropy": {"mc_probs"},
    "vote_entropy": {"member_probs"},
    "consensus_kl": {"member_probs"},
    "batchbald": {"mc_probs"},
    "coreset": {"embeddings"},
    "kmeans": {"embeddings"},
    "cluster_margin": {"probs", "embeddings"},
    "badge": {"probs", "embeddings"},
    "typiclust": {"features"},
    "probcover": {"features"},
    "auto": {"features"},
    "egl": {"probs", "embeddings"},
    "learning_loss": {"loss_pred"},
    "dfal": {"adv_dist"},
    "margin_coreset": {"probs", "embeddings"},
}


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def pool(seed: int, n: int = 40, c: int = 3, t: int = 5, m: int = 4, d: int = 6) -> dict:
    """One seeded array of every kind, over the same n samples."""
    rng = np.random.default_rng(seed)
    return {
        "probs": softmax(2 * rng.normal(size=(n, c))),
        "mc_probs": softmax(rng.normal(size=(n, 1, c)) + rng.normal(size=(n, t, c))),
        "member_probs": softmax(rng.normal(size=(n, 1, c)) + rng.normal(size=(n, m, c))),
        "embeddings": rng.normal(size=(n, d)),
        "features": rng.normal(size=(n, d)),
        "loss_pred": rng.random(n),
        "adv_dist": rng.random(n),
    }


def arrays_for(name: str, arrays: dict) -> dict:
    s = strategies.get(name)
    return {k: arrays[k] for k in s.needs | s.optional}


def entropy_of(p: np.ndarray) -> float:
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# --------------------------------------------------------------------------- registry


def test_every_strategy_of_the_taxonomy_is_registered_with_its_arrays():
    assert set(REQUIRED) <= set(strategies.available())
    for name, needs in REQUIRED.items():
        assert set(strategies.get(name).needs) == needs, name
    assert strategies.get("typiclust").optional == {"embeddings"}
    assert strategies.get("probcover").optional == {"embeddings"}


def test_descriptions_are_one_line_and_docstrings_cite_a_paper():
    described = strategies.describe()
    for name in REQUIRED:
        text = described[name]
        assert text and "\n" not in text, name
        doc = strategies.get(name).fn.__doc__
        assert any(str(year) in doc for year in range(1948, 2026)), f"{name} cites no paper"


def test_importing_strategies_loads_neither_torch_nor_scipy():
    code = (
        "import sys; from dal_widgets import strategies; "
        "print(sorted(m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_strategy_suggests_a_name():
    with pytest.raises(KeyError, match="Did you mean 'entropy'"):
        strategies.select("entropyy", 1, probs=np.eye(2))


def test_fewer_candidates_than_n_is_an_error_naming_n():
    p = softmax(np.arange(8.0).reshape(4, 2))
    mask = np.array([True, True, False, False])
    with pytest.raises(
        ValueError, match=r"'n' parameter .* unlabeled candidates \(2 of 4\). Got 3"
    ):
        strategies.select("entropy", 3, probs=p, labeled_mask=mask)
    for name in ("coreset", "badge", "batchbald"):
        with pytest.raises(ValueError, match="'n' parameter"):
            strategies.select(name, 5, **arrays_for(name, pool(0, n=4)))


@pytest.mark.parametrize("n, exc", [(0, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_n_is_rejected(n, exc):
    with pytest.raises(exc, match="'n' parameter"):
        strategies.select("margin", n, probs=np.eye(3))


@pytest.mark.parametrize(
    "probs, message",
    [
        ([[np.nan, 1.0], [0.5, 0.5]], r"'probs' .* finite numbers\. Got 1 NaN"),
        ([[np.inf, -np.inf], [0.5, 0.5]], r"'probs' .* finite numbers\. Got 2 NaN"),
        ([[2.0, -1.0], [0.5, 0.5]], r"'probs' .* minimum -1 instead \(did you pass logits\?\)"),
        ([[0.3, 0.3], [0.5, 0.5]], r"row sums in \[0\.6, 1\]"),
    ],
)
def test_invalid_probabilities_are_rejected(probs, message):
    with pytest.raises(ValueError, match=message):
        strategies.select("entropy", 1, probs=np.array(probs))


def test_validation_finds_one_nan_deep_in_a_large_array():
    mc = np.full((5000, 4, 3), 1 / 3)
    mc[4321, 2, 1] = np.nan
    with pytest.raises(ValueError, match="'mc_probs' .* Got 1 NaN"):
        strategies.select("bald", 1, mc_probs=mc)
    emb = np.zeros((3000, 400))
    emb[2999, 399] = np.inf
    with pytest.raises(ValueError, match="'embeddings' .* Got 1 NaN"):
        strategies.select("coreset", 1, embeddings=emb)


def test_missing_and_mismatched_arrays_are_named():
    with pytest.raises(ValueError, match=r"needs 'embeddings'"):
        strategies.select("badge", 1, probs=np.eye(3))
    with pytest.raises(ValueError, match="share their first dimension"):
        strategies.select("badge", 1, probs=np.eye(3), embeddings=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="must have 3 dimensions|'mc_probs'"):
        strategies.select("bald", 1, mc_probs=np.eye(3))


def test_unknown_keyword_suggests_the_parameter():
    arrays = pool(0)
    with pytest.raises(TypeError, match="Did you mean 'num_samples'"):
        strategies.select("batchbald", 2, mc_probs=arrays["mc_probs"], num_sample=5)


def test_bad_strategy_parameters_are_named():
    arrays = pool(0)
    with pytest.raises(ValueError, match="'num_samples' parameter"):
        strategies.select("batchbald", 2, mc_probs=arrays["mc_probs"], num_samples=0)
    with pytest.raises(ValueError, match="'purity' parameter"):
        strategies.select("probcover", 2, features=arrays["features"], purity=1.5)
    with pytest.raises(TypeError, match="'factor' parameter"):
        strategies.select("cluster_margin", 2, **arrays_for("cluster_margin", arrays), factor=2.5)


def test_bad_device_is_an_error_naming_device():
    arrays = arrays_for("coreset", pool(0))
    with pytest.raises(ValueError, match="'device' parameter"):
        strategies.select("coreset", 2, device="tpu:7", **arrays)
    with pytest.raises(TypeError, match="'device' parameter"):
        strategies.select("coreset", 2, device=3.5, **arrays)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'device' parameter .*CUDA is not available"):
            strategies.select("coreset", 2, device="cuda", **arrays)
    cpu = strategies.select("coreset", 3, device="cpu", rng=1, **arrays)
    assert (
        cpu == strategies.select("coreset", 3, device=torch.device("cpu"), rng=1, **arrays)
    ).all()
    assert (cpu == strategies.select("coreset", 3, device=None, rng=1, **arrays)).all()


# --------------------------------------------------------------------------- uncertainty

P3 = np.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0], [0.5, 0.3, 0.2]])


def test_uncertainty_scores_by_hand():
    np.testing.assert_allclose(
        strategies.scores("least_confidence", probs=P3), [0.3, 0.6, 0.0, 0.5]
    )
    np.testing.assert_allclose(strategies.scores("margin", probs=P3), [-0.5, 0.0, -1.0, -0.2])
    np.testing.assert_allclose(strategies.scores("ratio", probs=P3), [2 / 7, 1.0, 0.0, 0.6])
    expected = [entropy_of(row) for row in P3]
    np.testing.assert_allclose(strategies.scores("entropy", probs=P3), expected)
    assert strategies.select("margin", 2, probs=P3, rng=0).tolist() == [1, 3]
    assert strategies.select("least_confidence", 1, probs=P3, rng=0).tolist() == [1]


@pytest.mark.parametrize("c", [2, 7, 40])  # 40 classes takes the np.partition branch
def test_uncertainty_matches_naive_numpy(c):
    rng = np.random.default_rng(c)
    for dtype in (np.float64, np.float32):
        p = softmax(3 * rng.normal(size=(3000, c))).astype(dtype)
        p64 = p.astype(np.float64)
        tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12}
        srt = np.sort(p64, axis=1)
        np.testing.assert_allclose(
            strategies.scores("margin", probs=p), srt[:, -2] - srt[:, -1], **tol
        )
        np.testing.assert_allclose(
            strategies.scores("least_confidence", probs=p), 1 - srt[:, -1], **tol
        )
        np.testing.assert_allclose(
            strategies.scores("ratio", probs=p), srt[:, -2] / srt[:, -1], **tol
        )
        naive = -(p64 * np.log(np.where(p64 > 0, p64, 1))).sum(axis=1)
        np.testing.assert_allclose(strategies.scores("entropy", probs=p), naive, **tol)


def test_one_hot_rows_have_zero_entropy_without_warnings():
    p = np.eye(3)[[0, 1, 2, 0]] * 1.0
    p[3] = [0.5, 0.5, 0.0]
    np.testing.assert_allclose(strategies.scores("entropy", probs=p), [0, 0, 0, math.log(2)])


def test_all_equal_scores_are_a_degenerate_error():
    with pytest.raises(strategies.DegenerateScoresError, match="same score"):
        strategies.select("entropy", 1, probs=np.full((4, 2), 0.5))
    # Selecting every candidate needs no ranking.
    assert sorted(strategies.select("entropy", 4, probs=np.full((4, 2), 0.5), rng=0)) == [
        0,
        1,
        2,
        3,
    ]


def test_ties_are_broken_by_the_rng_not_by_index():
    p = np.array([[0.5, 0.5]] * 6 + [[0.9, 0.1]] * 2)
    seen = set()
    for seed in range(40):
        picks = strategies.select("margin", 2, probs=p, rng=seed)
        assert set(picks) <= set(range(6))
        seen.update(picks.tolist())
    assert seen == set(range(6))


def test_random_picks_only_unlabeled_and_is_seeded():
    mask = np.zeros(50, dtype=bool)
    mask[::2] = True
    picks = strategies.select("random", 25, labeled_mask=mask, rng=3)
    assert sorted(picks) == list(range(1, 50, 2))
    a = strategies.select("random", 5, labeled_mask=mask, rng=4)
    assert (a == strategies.select("random", 5, labeled_mask=mask, rng=4)).all()
    assert not (a == strategies.select("random", 5, labeled_mask=mask, rng=5)).all()


# --------------------------------------------------------------------------- MC dropout, committees


def test_bayesian_scores_by_hand():
    # Row 0: two confident passes that disagree. Row 1: identical passes. Row 2: 3 of 4 agree.
    mc = np.array(
        [
            [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
            [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],
            [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]],
        ]
    )
    bald = strategies.scores("bald", mc_probs=mc)
    assert bald[0] == pytest.approx(math.log(2)) and bald[1] == 0.0
    mean2 = mc[2].mean(axis=0)
    expected2 = entropy_of(mean2) - np.mean([entropy_of(r) for r in mc[2]])
    assert bald[2] == pytest.approx(expected2)
    np.testing.assert_allclose(strategies.scores("variation_ratios", mc_probs=mc), [0.5, 0.0, 0.25])
    mean_std = strategies.scores("mean_std", mc_probs=mc)
    np.testing.assert_allclose(mean_std, [0.5, 0.0, mc[2].std(axis=0).mean()])
    max_ent = strategies.scores("max_entropy", mc_probs=mc)
    np.testing.assert_allclose(max_ent, [math.log(2), math.log(2), entropy_of(mean2)])


def test_bayesian_scores_match_naive_numpy():
    mc = pool(1, n=200, c=4, t=7)["mc_probs"]
    mean = mc.mean(axis=1)
    ent_mean = np.array([entropy_of(r) for r in mean])
    mean_ent = np.array([[entropy_of(p) for p in row] for row in mc]).mean(axis=1)
    np.testing.assert_allclose(
        strategies.scores("bald", mc_probs=mc), ent_mean - mean_ent, atol=1e-12
    )
    np.testing.assert_allclose(strategies.scores("max_entropy", mc_probs=mc), ent_mean)
    np.testing.assert_allclose(
        strategies.scores("mean_std", mc_probs=mc), mc.std(axis=1).mean(axis=1)
    )
    votes = mc.argmax(axis=2)
    mode = np.array([np.bincount(v, minlength=4).max() for v in votes]) / 7
    np.testing.assert_allclose(strategies.scores("variation_ratios", mc_probs=mc), 1 - mode)


def test_committee_scores_by_hand_and_against_kl():
    members = np.array(
        [
            [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],  # votes split 2:2
            [[0.6, 0.4], [0.9, 0.1], [0.7, 0.3], [0.8, 0.2]],  # unanimous
        ]
    )
    np.testing.assert_allclose(
        strategies.scores("vote_entropy", member_probs=members), [math.log(2), 0]
    )
    kl = strategies.scores("consensus_kl", member_probs=members)
    assert kl[0] == pytest.approx(math.log(2))
    rnd = pool(2, n=50, c=3, m=5)["member_probs"]
    consensus = rnd.mean(axis=1, keepdims=True)
    naive = (rnd * np.log(rnd / consensus)).sum(axis=2).mean(axis=1)
    np.testing.assert_allclose(
        strategies.scores("consensus_kl", member_probs=rnd), naive, atol=1e-12
    )
    votes = rnd.argmax(axis=2)
    shares = np.array([np.bincount(v, minlength=3) / 5 for v in votes])
    naive_ve = np.array([entropy_of(s) for s in shares])
    np.testing.assert_allclose(strategies.scores("vote_entropy", member_probs=rnd), naive_ve)


@pytest.mark.parametrize("name", ["bald", "mean_std", "variation_ratios", "batchbald"])
def test_mc_strategies_on_a_network_without_dropout_are_a_clear_error(name):
    # Every pass identical (float32 noise-free copies), as from a model with no dropout.
    probs = softmax(np.random.default_rng(0).normal(size=(30, 1, 4))).astype(np.float32)
    mc = np.repeat(probs, 8, axis=1)
    with pytest.raises(strategies.DegenerateScoresError, match="dropout"):
        strategies.select(name, 3, mc_probs=mc, rng=0)


def test_identical_ensemble_members_are_a_clear_error():
    members = np.repeat(pool(0)["probs"][:, None, :], 4, axis=1)
    with pytest.raises(strategies.DegenerateScoresError):
        strategies.select("consensus_kl", 2, member_probs=members)


_SAME = np.repeat(softmax(np.random.default_rng(0).normal(size=(30, 1, 4))), 6, axis=1)


@pytest.mark.parametrize(
    "name, arrays, causes, not_cause",
    [
        # Constant model outputs (e.g. unscaled features) are not a dropout problem.
        ("margin", {"probs": np.full((30, 2), 0.5)}, ["unscaled", "too few", "dead"], "dropout"),
        ("least_confidence", {"probs": np.full((30, 2), 0.5)}, ["empty texts"], "dropout"),
        ("entropy", {"probs": np.full((30, 3), 1 / 3)}, ["unscaled", "too few"], "dropout"),
        ("bald", {"mc_probs": _SAME}, ["no dropout", "too weak"], None),
        ("consensus_kl", {"member_probs": _SAME}, ["members", "seed"], "dropout"),
        ("learning_loss", {"loss_pred": np.ones(30)}, ["loss-prediction head"], "dropout"),
        ("dfal", {"adv_dist": np.ones(30)}, ["DeepFool", "unscaled"], "dropout"),
    ],
)
def test_degenerate_scores_name_the_likely_causes_of_the_arrays_used(
    name, arrays, causes, not_cause
):
    with pytest.raises(strategies.DegenerateScoresError, match="same score") as info:
        strategies.select(name, 3, rng=0, **arrays)
    text = str(info.value)
    assert all(c in text for c in causes), text
    assert not_cause is None or not_cause not in text, text


# --------------------------------------------------------------------------- BatchBALD


def brute_joint_entropy(mc: np.ndarray, idx: list[int]) -> float:
    """H(y_idx) by enumerating every label configuration."""
    t, c = mc.shape[1], mc.shape[2]
    total = 0.0
    for config in itertools.product(range(c), repeat=len(idx)):
        like = np.ones(t)
        for i, y in zip(idx, config, strict=True):
            like = like * mc[i, :, y]
        q = like.mean()
        if q > 0:
            total -= q * math.log(q)
    return total


def brute_batchbald(mc: np.ndarray, n: int) -> list[int]:
    cond = np.array([np.mean([entropy_of(p) for p in row]) for row in mc])
    chosen: list[int] = []
    for _ in range(n):
        gains = {
            x: brute_joint_entropy(mc, [*chosen, x]) - cond[x]
            for x in range(len(mc))
            if x not in chosen
        }
        chosen.append(max(gains, key=gains.get))
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_batchbald_exact_joint_entropy_matches_brute_force(seed):
    mc = pool(seed, n=10, c=3, t=5)["mc_probs"]
    picks = strategies.select("batchbald", 4, mc_probs=mc, rng=0)  # 3^3 = 27 configs: exact
    assert picks.tolist() == brute_batchbald(mc, 4)


def test_batchbald_sampled_joint_entropy_is_close_to_exact():
    # The estimator used once C^|S| exceeds num_samples, checked directly (it is internal).
    import torch

    from dal_widgets.strategies._batchbald import JointEntropy

    mc = pool(5, n=8, c=3, t=6)["mc_probs"]
    chosen = [0, 1, 2, 3]
    state = JointEntropy(6, 81, np.random.default_rng(0), torch.device("cpu"), torch.float64)
    for i in chosen:
        state.add(torch.from_numpy(mc[i]))
    assert state.exact  # 3^4 = 81 configurations
    cand = torch.from_numpy(mc[4:])
    base = brute_joint_entropy(mc, chosen)
    truth = [brute_joint_entropy(mc, [*chosen, x]) - base for x in range(4, 8)]
    np.testing.assert_allclose(state.conditional(cand).numpy(), truth, atol=1e-10)
    state.sample(20_000)
    assert not state.exact
    np.testing.assert_allclose(state.conditional(cand).numpy(), truth, atol=0.03)
    # Extending the samples by one more point (labels drawn from each sample's own pass).
    state.add(torch.from_numpy(mc[4]))
    base = brute_joint_entropy(mc, [*chosen, 4])
    truth = [brute_joint_entropy(mc, [*chosen, 4, x]) - base for x in range(5, 8)]
    np.testing.assert_allclose(state.conditional(cand[1:]).numpy(), truth, atol=0.03)
    # With few samples the estimate is rough but still an entropy in [0, log C].
    rough = JointEntropy(6, 20, np.random.default_rng(0), torch.device("cpu"), torch.float64)
    for i in chosen:
        rough.add(torch.from_numpy(mc[i]))
    est = rough.conditional(cand).numpy()
    assert not rough.exact and ((est >= 0) & (est <= math.log(3) + 1e-12)).all()


def test_batchbald_avoids_the_copies_that_topk_bald_picks():
    # Four passes. A is informative, and so are its three exact copies; B asks a different
    # question (which pass pair), a little less informative alone.
    a = [[0.95, 0.05], [0.95, 0.05], [0.05, 0.95], [0.05, 0.95]]
    b = [[0.88, 0.12], [0.12, 0.88], [0.88, 0.12], [0.12, 0.88]]
    dull = [[0.6, 0.4], [0.55, 0.45], [0.6, 0.4], [0.55, 0.45]]
    mc = np.array([a, a, a, a, b, dull, dull])
    bald = strategies.scores("bald", mc_probs=mc)
    assert bald[4] < bald[0]
    top2 = strategies.select("bald", 2, mc_probs=mc, rng=0)
    assert set(top2) <= {0, 1, 2, 3}  # top-k BALD: two copies of A
    for seed in range(5):
        picks = strategies.select("batchbald", 2, mc_probs=mc, rng=seed)
        assert picks[0] in {0, 1, 2, 3} and picks[1] == 4
    firsts = {int(strategies.select("batchbald", 1, mc_probs=mc, rng=s)[0]) for s in range(30)}
    assert len(firsts) > 1  # the tie among the copies is broken by the rng


# --------------------------------------------------------------------------- core-set


def textbook_k_center(
    x: np.ndarray, labeled: np.ndarray, n: int, first: int | None = None
) -> list[int]:
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    if labeled.size:
        min_d = dist[:, labeled].min(axis=1)
        picks = []
    else:
        picks = [first]
        min_d = dist[:, first].copy()
    while len(picks) < n:
        masked = min_d.copy()
        masked[labeled] = -1
        masked[picks] = -1
        j = int(np.argmax(masked))
        picks.append(j)
        min_d = np.minimum(min_d, dist[:, j])
    return picks


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_coreset_matches_textbook_k_center_on_500_points(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16))
    labeled = np.sort(rng.choice(500, size=25, replace=False))
    mask = np.zeros(500, dtype=bool)
    mask[labeled] = True
    picks = strategies.select("coreset", 200, embeddings=x.astype(dtype), labeled_mask=mask, rng=0)
    assert picks.tolist() == textbook_k_center(x, labeled, 200)


def test_coreset_matches_textbook_when_a_dense_cluster_hides_the_farthest_point():
    # 300 near-copies far away: after the first pick lands there, the top bounds all belong
    # to that cluster and are stale, so the lazy update has to look further down.
    rng = np.random.default_rng(3)
    x = np.vstack([50.0 + 0.01 * rng.normal(size=(300, 3)), rng.normal(size=(200, 3))])
    mask = np.zeros(500, dtype=bool)
    mask[400:410] = True
    picks = strategies.select("coreset", 40, embeddings=x, labeled_mask=mask, rng=0)
    assert picks.tolist() == textbook_k_center(x, np.arange(400, 410), 40)


def test_coreset_without_labels_starts_from_an_rng_point():
    x = np.random.default_rng(1).normal(size=(300, 5))
    first = int(np.random.default_rng(7).integers(300))
    picks = strategies.select("coreset", 60, embeddings=x, rng=7)
    assert picks.tolist() == textbook_k_center(x, np.array([], dtype=int), 60, first=first)
    starts = {int(strategies.select("coreset", 1, embeddings=x, rng=s)[0]) for s in range(10)}
    assert len(starts) > 5


def test_coreset_on_a_prefiltered_subset_and_with_duplicates():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 4))
    mask = np.ones(400, dtype=bool)
    mask[rng.choice(400, size=60, replace=False)] = False  # few candidates: gathered path
    picks = strategies.select("coreset", 30, embeddings=x, labeled_mask=mask, rng=0)
    # The textbook version with non-candidates treated as labeled-but-not-centres.
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(axis=2))
    min_d = dist[:, np.flatnonzero(mask)].min(axis=1)
    ref = []
    for _ in range(30):
        masked = np.where(mask, -1.0, min_d)
        masked[ref] = -1
        ref.append(int(np.argmax(masked)))
        min_d = np.minimum(min_d, dist[:, ref[-1]])
    assert picks.tolist() == ref
    dup = np.repeat(rng.normal(size=(5, 3)), 6, axis=0)  # 5 distinct points, 6 copies each
    picks = strategies.select("coreset", 12, embeddings=dup, rng=0)
    assert len(set(picks.tolist())) == 12
    assert len({tuple(dup[i]) for i in picks[:5]}) == 5  # the first five cover every point


def test_coreset_ties_are_broken_by_the_rng():
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    x = np.vstack([[0.0, 0.0], np.c_[np.cos(angles), np.sin(angles)]])
    mask = np.zeros(9, dtype=bool)
    mask[0] = True  # the centre; every ring point is equally far
    firsts = {
        int(strategies.select("coreset", 1, embeddings=x, labeled_mask=mask, rng=s)[0])
        for s in range(40)
    }
    assert len(firsts) >= 6 and 0 not in firsts


# --------------------------------------------------------------------------- BADGE


def naive_badge(probs: np.ndarray, h: np.ndarray, n: int, seed: int) -> list[int]:
    """k-means++ on explicit N x (C*D) gradient embeddings, replaying BADGE's draws."""
    rng = np.random.default_rng(seed)
    a = probs.copy()
    a[np.arange(len(a)), probs.argmax(axis=1)] -= 1.0
    g = np.stack([np.outer(a[i], h[i]).ravel() for i in range(len(a))])
    picks = [int(np.argmax((g * g).sum(axis=1)))]
    best = ((g - g[picks[0]]) ** 2).sum(axis=1)
    best[picks] = 0
    while len(picks) < n:
        cum = np.cumsum(best)
        picks.append(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")))
        best = np.minimum(best, ((g - g[picks[-1]]) ** 2).sum(axis=1))
        best[picks] = 0
    return picks


@pytest.mark.parametrize("seed", range(4))
def test_badge_factorized_matches_explicit_gradient_embeddings(seed):
    rng = np.random.default_rng(seed)
    probs = softmax(2 * rng.normal(size=(120, 4)))
    h = rng.normal(size=(120, 5))
    picks = strategies.select("badge", 25, probs=probs, embeddings=h, rng=seed)
    assert picks.tolist() == naive_badge(probs, h, 25, seed)


def test_badge_one_hot_correction_is_on_the_class_axis():
    # Equal embedding norms: the first centre is the largest |p - e_yhat|, the flattest row.
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    h = np.ones((4, 3))
    assert strategies.select("badge", 1, probs=probs, embeddings=h, rng=0).tolist() == [2]


def test_badge_has_no_phantom_centre_at_the_origin():
    # Point 0 has the largest gradient and is the first centre. Point 1 has a tiny gradient,
    # so it is near the origin but far from point 0: with a phantom centre at the origin it
    # would almost never be drawn; with only real centres it is drawn ~97% of the time.
    probs = np.array([[0.5, 0.5], [0.99, 0.01], [0.6, 0.4], [0.6, 0.4]])
    h = np.array([[10.0, 0.0], [0.0, 100.0], [9.0, 0.5], [9.0, -0.5]])
    second = [
        int(strategies.select("badge", 2, probs=probs, embeddings=h, rng=s)[1]) for s in range(200)
    ]
    assert second.count(1) > 150


def test_badge_never_picks_duplicates():
    probs = np.tile([[0.7, 0.3]], (30, 1))
    h = np.tile([[1.0, 2.0]], (30, 1))  # 30 identical samples: all distances are zero
    picks = strategies.select("badge", 10, probs=probs, embeddings=h, rng=0)
    assert len(set(picks.tolist())) == 10
    mask = np.zeros(30, dtype=bool)
    mask[:25] = True
    picks = strategies.select("badge", 5, probs=probs, embeddings=h, labeled_mask=mask, rng=0)
    assert sorted(picks) == [25, 26, 27, 28, 29]


# --------------------------------------------------------------------------- k-means, Cluster-Margin


def blobs(sizes, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(len(sizes), 3)
    parts = [c + spread * rng.normal(size=(s, 3)) for c, s in zip(centres, sizes, strict=True)]
    return np.vstack(parts), np.repeat(np.arange(len(sizes)), sizes)


def test_kmeans_picks_the_point_nearest_each_centroid():
    x, group = blobs([10, 10, 10])
    picks = strategies.select("kmeans", 3, embeddings=x, rng=0)
    assert sorted(group[picks]) == [0, 1, 2]
    for p in picks:
        members = x[group == group[p]]
        nearest = np.argmin(((members - members.mean(axis=0)) ** 2).sum(axis=1))
        assert np.allclose(x[p], members[nearest])


def test_cluster_margin_prefilters_by_margin_and_round_robins_smallest_first():
    x, group = blobs([2, 8])
    probs = np.tile([[0.5, 0.5]], (10, 1))
    probs += np.linspace(0, 0.01, 10)[:, None] * [[1, -1]]  # distinct margins
    picks = strategies.select("cluster_margin", 3, probs=probs, embeddings=x, rng=0, n_clusters=2)
    assert sorted(group[picks].tolist()) == [0, 0, 1]  # the small cluster gets two turns
    # The pre-filter keeps the factor * n lowest margins: here rows 0 and 1 only.
    more = np.vstack([x, x + 50])
    probs2 = np.vstack([probs, np.tile([[0.99, 0.01]], (10, 1))])
    picks = strategies.select("cluster_margin", 2, probs=probs2, embeddings=more, rng=0, factor=5)
    assert (picks < 10).all()


def test_cluster_margin_uses_kmeans_beyond_the_linkage_limit():
    rng = np.random.default_rng(0)
    x = np.repeat(10.0 * np.eye(3, 4), 1500, axis=0) + 0.01 * rng.normal(size=(4500, 4))
    probs = softmax(rng.normal(size=(4500, 3)))
    picks = strategies.select("cluster_margin", 3, probs=probs, embeddings=x, rng=0, factor=2000)
    assert sorted((picks // 1500).tolist()) == [0, 1, 2]


# --------------------------------------------------------------------------- cold start


def naive_most_typical(x: np.ndarray, k: int) -> int:
    """argmax of 1 / mean distance to the k nearest other points."""
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(axis=2))
    np.fill_diagonal(dist, np.inf)
    return int(np.argmin(np.sort(dist, axis=1)[:, :k].mean(axis=1)))


def test_typiclust_picks_the_most_typical_point_of_each_uncovered_cluster():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(30, 2)), [10.0, 0.0] + 0.5 * rng.normal(size=(12, 2))])
    picks = strategies.select("typiclust", 2, features=x, rng=0)
    # Larger cluster first; k = min(20, size // 2) neighbours, as in the authors' code.
    assert picks.tolist() == [naive_most_typical(x[:30], 15), 30 + naive_most_typical(x[30:], 6)]
    mask = np.zeros(len(x), dtype=bool)
    mask[:3] = True  # a label in the big cluster: the next pick comes from the other one
    picks = strategies.select("typiclust", 1, features=x, labeled_mask=mask, rng=0, max_clusters=2)
    assert picks[0] >= 30


def test_typiclust_and_probcover_prefer_embeddings_over_features():
    rng = np.random.default_rng(1)
    x, group = blobs([12, 12, 12], spread=0.2)
    noise = rng.normal(size=x.shape)
    for name, extra in (("typiclust", {}), ("probcover", {"radius": 1.0})):
        picks = strategies.select(name, 3, features=noise, embeddings=x, rng=0, **extra)
        assert sorted(group[picks]) == [0, 1, 2], name
        same = strategies.select(name, 3, features=x, rng=0, **extra)
        assert picks.tolist() == same.tolist(), name


def test_probcover_covers_the_largest_uncovered_ball_first():
    # radius 0.7: 0.6 reaches all five points of the first group (0.3 reaches four), 5.4 all
    # three of the second (5.0 reaches two), and 9.0 only itself.
    x = np.array([[0.0], [0.3], [0.6], [0.9], [1.2], [5.0], [5.4], [5.8], [9.0]])
    picks = strategies.select("probcover", 3, features=x, radius=0.7, rng=0)
    assert picks.tolist() == [2, 6, 8]
    mask = np.zeros(9, dtype=bool)
    mask[1] = True  # 0.3 is labeled: it covers 0.0 to 0.9, leaving 1.2 alone in that group
    assert (
        strategies.select("probcover", 1, features=x, labeled_mask=mask, radius=0.7, rng=0)[0] == 6
    )
    # Once everything is covered the rest are random, and still unique and unlabeled.
    picks = strategies.select("probcover", 8, features=x, labeled_mask=mask, radius=0.7, rng=0)
    assert len(set(picks.tolist())) == 8 and 1 not in picks


def test_probcover_chooses_its_radius_from_cluster_purity():
    x, group = blobs([15, 15, 15], spread=0.3)
    picks = strategies.select("probcover", 3, features=x, rng=0, n_clusters=3)
    assert sorted(group[picks]) == [0, 1, 2]


# --------------------------------------------------------------------------- EGL, learned loss, DFAL


def test_egl_matches_explicit_gradient_norms():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(30, 4)))
    h = rng.normal(size=(30, 5))
    naive = [
        sum(probs[i, c] * np.linalg.norm(np.outer(probs[i] - np.eye(4)[c], h[i])) for c in range(4))
        for i in range(30)
    ]
    np.testing.assert_allclose(strategies.scores("egl", probs=probs, embeddings=h), naive)
    by_hand = strategies.scores(
        "egl",
        probs=np.array([[1.0, 0.0], [0.5, 0.5]]),
        embeddings=np.array([[3.0, 4.0], [0.0, 2.0]]),
    )
    np.testing.assert_allclose(by_hand, [0.0, math.sqrt(0.5) * 2])


def test_learning_loss_and_dfal_rank_their_arrays():
    loss = np.array([0.1, 0.9, 0.5, 0.3])
    assert strategies.select("learning_loss", 2, loss_pred=loss, rng=0).tolist() == [1, 2]
    dist = np.array([0.1, 0.9, 0.5, 0.3])
    assert strategies.select("dfal", 2, adv_dist=dist, rng=0).tolist() == [0, 3]


# --------------------------------------------------------------------------- composition


def test_margin_coreset_is_coreset_on_the_lowest_margins():
    arrays = pool(3, n=120)
    mask = np.zeros(120, dtype=bool)
    mask[:10] = True
    picks = strategies.select(
        "margin_coreset", 4, labeled_mask=mask, rng=0, **arrays_for("margin_coreset", arrays)
    )
    margin = strategies.scores("margin", probs=arrays["probs"])
    top = np.argsort(-np.where(mask, -np.inf, margin))[:40]
    assert set(picks) <= set(top)
    sub = mask.copy()
    sub[np.setdiff1d(np.arange(120), top)] = True  # non-candidates blocked, not centres
    x = arrays["embeddings"]
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(axis=2))
    min_d = dist[:, :10].min(axis=1)
    ref = []
    for _ in range(4):
        masked = np.where(sub, -1.0, min_d)
        masked[ref] = -1
        ref.append(int(np.argmax(masked)))
        min_d = np.minimum(min_d, dist[:, ref[-1]])
    assert picks.tolist() == ref


def test_compose_registers_a_documented_strategy():
    made = strategies.compose(
        "entropy_kmeans_test", prefilter="entropy", then="kmeans", factor=3, replace=True
    )
    assert made.needs == {"probs", "embeddings"} and "factor" in made.params
    assert "entropy" in made.description and "kmeans" in strategies.get(made.name).fn.__doc__
    arrays = pool(4, n=60)
    picks = strategies.select(made.name, 5, rng=0, **arrays_for(made.name, arrays))
    ent = strategies.scores("entropy", probs=arrays["probs"])
    assert set(picks) <= set(np.argsort(-ent)[:15])
    picks = strategies.select(made.name, 5, rng=0, factor=1, **arrays_for(made.name, arrays))
    assert sorted(picks) == sorted(np.argsort(-ent)[:5])
    # A score strategy as the second step: the top n of it among the pre-filtered.
    twice = strategies.compose(
        "margin_then_entropy_test", prefilter="margin", then="entropy", replace=True
    )
    assert len(strategies.select(twice.name, 3, probs=arrays["probs"], rng=0)) == 3


def test_compose_errors_name_the_parameter():
    with pytest.raises(ValueError, match="'prefilter' parameter .* score strategy"):
        strategies.compose("x_test", prefilter="coreset", then="kmeans")
    with pytest.raises(KeyError, match="Unknown strategy"):
        strategies.compose("x_test", prefilter="margin", then="coreseet")
    with pytest.raises(ValueError, match="'factor' parameter"):
        strategies.compose("x_test", prefilter="margin", then="coreset", factor=0)
    with pytest.raises(TypeError, match="'then_params' parameter"):
        strategies.compose("x_test", prefilter="margin", then="coreset", then_params={"k": 1})
    with pytest.raises(ValueError, match="registered already"):
        strategies.compose("margin_coreset", prefilter="margin", then="coreset")
    flat = {"probs": np.full((20, 2), 0.5), "embeddings": np.zeros((20, 2))}
    with pytest.raises(strategies.DegenerateScoresError, match="pre-filter 'margin'"):
        strategies.select("margin_coreset", 1, rng=0, **flat)


def test_register_in_ten_lines():
    @strategies.register("smallest_prob_test", needs={"probs"}, replace=True)
    def smallest_prob(probs):
        """Smallest class probability (a test strategy, 2024)."""
        return -probs.min(axis=1)

    @strategies.register("first_free_test", kind="batch", replace=True)
    def first_free(n, *, candidates, labeled_mask, rng):
        """The first n unlabeled positions (a test strategy, 2024)."""
        return candidates[:n]

    assert strategies.select("smallest_prob_test", 1, probs=P3, rng=0).tolist() == [2]
    mask = np.array([True, False, True, False, False])
    assert strategies.select("first_free_test", 2, labeled_mask=mask).tolist() == [1, 3]

    # The batch example of register's docstring, verbatim.
    @strategies.register("strata", needs={"embeddings"}, kind="batch", replace=True)
    def strata(n, *, candidates, labeled_mask, rng, embeddings, jitter=0.0):
        "One random sample per quantile bin of the first embedding coordinate."
        key = embeddings[candidates, 0] + jitter * rng.standard_normal(candidates.size)
        order = candidates[np.argsort(key, kind="stable")]
        bins = np.array_split(order, n)
        return np.array([b[rng.integers(b.size)] for b in bins])

    h = np.arange(20.0)[:, None]
    picks = strategies.select("strata", 5, embeddings=h, rng=0, jitter=0.1)
    assert sorted(picks // 4) == [0, 1, 2, 3, 4]
    assert strategies.get("strata").params == {"jitter"}


def test_a_buggy_batch_strategy_cannot_return_duplicates():
    @strategies.register("dupes_test", kind="batch", replace=True)
    def dupes(n, *, candidates, labeled_mask, rng):
        """Returns duplicates (a test strategy, 2024)."""
        return np.repeat(candidates[:1], n)

    with pytest.raises(RuntimeError, match="duplicate"):
        strategies.select("dupes_test", 2, labeled_mask=np.zeros(4, dtype=bool))


# --------------------------------------------------------------------------- the contract, for all


NAMES = sorted(REQUIRED)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("name", NAMES)
def test_contract_unique_exact_unlabeled_and_seeded(name, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    size = data.draw(st.integers(3, 24), label="size")
    arrays = arrays_for(name, pool(seed, n=size, c=data.draw(st.integers(2, 4), label="classes")))
    mask = np.random.default_rng(seed + 1).random(size) < data.draw(
        st.floats(0, 0.7), label="labeled"
    )
    free = int((~mask).sum())
    if free == 0:
        mask[0] = False
        free = 1
    n = data.draw(st.integers(1, free), label="n")
    try:
        picks = strategies.select(name, n, labeled_mask=mask, rng=seed, **arrays)
    except strategies.DegenerateScoresError:
        # Only legitimate when the scores really are all equal over the candidates.
        assert strategies.get(name).kind == "score" or name == "batchbald"
        if strategies.get(name).kind == "score":
            vals = strategies.scores(name, **arrays)[~mask]
            assert vals.max() == vals.min()
        return
    assert picks.dtype == np.int64 and picks.shape == (n,)
    assert len(set(picks.tolist())) == n
    assert not mask[picks].any() and picks.min() >= 0 and picks.max() < size
    again = strategies.select(name, n, labeled_mask=mask, rng=seed, **arrays)
    assert (picks == again).all()
    with pytest.raises(ValueError, match="'n' parameter"):
        strategies.select(name, free + 1, labeled_mask=mask, rng=seed, **arrays)


@pytest.mark.gpu
def test_torch_strategies_agree_on_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    arrays = pool(0, n=300)
    for name in ("coreset", "badge", "batchbald", "kmeans"):
        cpu = strategies.select(name, 8, rng=0, device="cpu", **arrays_for(name, arrays))
        gpu = strategies.select(name, 8, rng=0, device="cuda", **arrays_for(name, arrays))
        assert len(set(gpu.tolist())) == 8
        if name in ("coreset",):
            assert (cpu == gpu).all()


# --------------------------------------------------------------------------- what a session can run

# The built-in strategies, read before any test registers its own.
BUILT_IN = tuple(strategies.available())


def test_unusable_reason_reads_the_needs_against_the_data_and_the_training():
    single = {"multi_label": False, "ensemble_size": 1}
    assert strategies.unusable_reason("entropy", **single) is None
    assert strategies.unusable_reason("random", multi_label=True, ensemble_size=1) is None
    reason = strategies.unusable_reason("vote_entropy", **single)
    assert "'member_probs'" in reason and "ensemble_size=5" in reason and "1 model" in reason
    assert strategies.unusable_reason("vote_entropy", multi_label=False, ensemble_size=2) is None
    reason = strategies.unusable_reason("multilabel_margin", **single)
    assert reason.startswith("for multi-label data only") and "single-label" in reason
    for name in ("entropy", "bald", "badge", "consensus_kl"):  # the data first: no config fixes it
        reason = strategies.unusable_reason(name, multi_label=True, ensemble_size=1)
        assert reason.startswith("for single-label data only"), name
    assert "dropout" in strategies.unusable_reason("bald", **single, dropout=False)
    assert strategies.unusable_reason("entropy", **single, dropout=False) is None
    reason = strategies.unusable_reason("learning_loss", **single, loss_head=False)
    assert "loss-prediction head" in reason and "TrainConfig(loss_head=True)" in reason
    # numpy scalars, as a session's attributes may hold them, are fine.
    assert strategies.unusable_reason(
        "entropy", multi_label=np.bool_(True), ensemble_size=np.int64(2)
    )
    # Read from the needs, so a composed or user strategy is judged like the built-in ones.
    strategies.compose("entropy_coreset_test", prefilter="entropy", then="coreset", replace=True)
    assert "multi-label" in strategies.unusable_reason(
        "entropy_coreset_test", multi_label=True, ensemble_size=3
    )


def test_usable_lists_the_strategies_without_a_reason_in_picker_order():
    for multi_label, size, dropout, head in itertools.product(
        [False, True], [1, 2], *[[False, True]] * 2
    ):
        facts = {
            "multi_label": multi_label,
            "ensemble_size": size,
            "dropout": dropout,
            "loss_head": head,
        }
        expected = [n for n in strategies.available() if not strategies.unusable_reason(n, **facts)]
        assert strategies.usable(**facts) == expected
    assert set(strategies.usable(multi_label=True, ensemble_size=1)) & set(BUILT_IN) == {
        "coreset", "dfal", "kmeans", "learning_loss", "multilabel_entropy",
        "multilabel_margin", "probcover", "random", "typiclust",
    }  # fmt: skip
    committee = {"vote_entropy", "consensus_kl"}
    assert not committee & set(strategies.usable(multi_label=False, ensemble_size=1))
    assert committee <= set(strategies.usable(multi_label=False, ensemble_size=2))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"multi_label": "yes"}, TypeError, "'multi_label' parameter .* must be a bool. Got 'yes'"),
        ({"multi_label": None}, TypeError, "'multi_label' parameter .* a bool. Got None"),
        (
            {"ensemble_size": 0},
            ValueError,
            r"'ensemble_size' parameter .* an int in \[1, inf\]. Got 0",
        ),
        ({"ensemble_size": 2.0}, TypeError, "'ensemble_size' parameter .* Got 2.0"),
        ({"ensemble_size": True}, TypeError, "'ensemble_size' parameter .* Got True"),
        ({"dropout": 1}, TypeError, "'dropout' parameter .* a bool. Got 1"),
        ({"loss_head": "no"}, TypeError, "'loss_head' parameter .* a bool. Got 'no'"),
    ],
)
def test_unusable_reason_and_usable_name_a_bad_argument(kwargs, exc, match):
    args = {"multi_label": False, "ensemble_size": 1, **kwargs}
    with pytest.raises(exc, match="of strategies.unusable_reason must"):
        strategies.unusable_reason("entropy", **args)
    with pytest.raises(exc, match=match):
        strategies.unusable_reason("entropy", **args)
    with pytest.raises(exc, match="of strategies.usable must"):
        strategies.usable(**args)


def test_unusable_reason_names_a_bad_strategy_name():
    with pytest.raises(KeyError, match="Did you mean 'entropy'"):
        strategies.unusable_reason("entropi", multi_label=False, ensemble_size=1)
    with pytest.raises(TypeError, match="'name' parameter of strategies.unusable_reason .* Got 3"):
        strategies.unusable_reason(3, multi_label=False, ensemble_size=1)
    with pytest.raises(TypeError, match="ensemble_size"):  # the facts have no silent default
        strategies.unusable_reason("entropy", multi_label=False)


def _blobs_and_tags() -> dict:
    """A small single-label dataset (three blobs) and a small multi-label one (three tags)."""
    import dal_widgets as dal

    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    X = np.array([[0, 0], [4, 0], [0, 4]], dtype=float)[y] + rng.normal(scale=1.5, size=(120, 2))
    Xm = rng.normal(size=(120, 3)).astype(np.float32)
    Y = np.stack([Xm[:, 0] > 0, Xm[:, 1] > 0, Xm[:, 2] > 0.5], 1).astype(np.uint8)
    return {
        "single": dal.datasets.from_arrays(X, y=np.array(["a", "b", "c"])[y], name="blobs"),
        "multi": dal.datasets.from_arrays(Xm, y=Y, classes=["red", "round", "rare"], name="tags"),
    }


@pytest.mark.parametrize(
    "data, model, config",
    [
        ("single", "auto", {}),  # one model, no loss head (it was fitted for "random")
        ("single", "auto", {"ensemble_size": 2, "loss_head": True}),
        ("single", "no dropout", {}),
        ("multi", "auto", {}),
    ],
)
def test_unusable_reason_agrees_with_what_a_fitted_session_runs(data, model, config):
    from torch import nn

    import dal_widgets as dal
    from dal_widgets.training import TrainConfig, has_dropout

    ds = _blobs_and_tags()[data]
    if model == "no dropout":
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    cfg = TrainConfig(steps=20, deepfool_iters=5, **config)
    s = dal.Session(
        ds, strategy="random", model=model, store=None, device="cpu", retrain="manual",
        train_config=cfg,
    )  # fmt: skip
    ids = ds.ids[:40].tolist()
    s.label(ids, ds.targets[ds.positions(ids)].tolist())
    s.train(block=True)  # once; every strategy then queries this model
    facts = {
        "multi_label": s.multi_label,
        "ensemble_size": s.train_config.ensemble_size,
        "dropout": has_dropout(s.model),
        "loss_head": getattr(s.model, "loss_head", None) is not None,
    }
    for name in BUILT_IN:
        reason = strategies.unusable_reason(name, **facts)
        s.strategy = name
        passes = s.arrays.passes
        if reason is None:
            picks = s.query(3)
            ran = s.store.queries()[-1]["strategy"]
            assert len(set(picks)) == 3 and ran.partition(" (")[0] == name  # auto: + regime
            continue
        with pytest.raises(ValueError) as err:
            s.query(3)
        message = str(err.value)
        assert f"Session.query: strategy {name!r} cannot run in this session: {reason}." in message
        assert message.endswith(f"Strategies that can: {', '.join(strategies.usable(**facts))}.")
        assert s.arrays.passes == passes, name  # refused before any inference
    s.close()


def test_an_unusable_strategy_is_refused_before_a_cold_start_stands_in():
    import dal_widgets as dal

    s = dal.Session(_blobs_and_tags()["multi"], strategy="entropy", store=None, device="cpu")
    with pytest.raises(ValueError, match="'entropy' cannot run in this session: for single-label"):
        s.query(3)
    assert s.round == 0 and s.store.queries() == []
    s.strategy = "multilabel_entropy"  # no model yet: the cold start stands in
    assert len(s.query(3)) == 3
    assert s.store.queries()[-1]["strategy"] == "random (cold start for multilabel_entropy)"
    s.close()


def test_auto_covers_while_labels_are_few_then_takes_the_smallest_margins():
    from dal_widgets.strategies._auto import regime

    rng = np.random.default_rng(0)
    # Two tight clusters far apart, and a model sure of everything but the last 5 samples.
    x = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(10, 0.1, (30, 2))])
    probs = np.tile([[0.99, 0.01]], (60, 1))
    probs[-5:] = [[0.51, 0.49], [0.52, 0.48], [0.53, 0.47], [0.54, 0.46], [0.55, 0.45]]
    few = np.zeros(60, bool)
    few[:2] = True  # 2 labels, both in the first cluster: fewer than 3 per class
    assert (
        regime(2, 2) == "coverage" and regime(6, 2) == "margin" and regime(99, None) == "coverage"
    )
    picks = strategies.select("auto", 1, features=x, probs=probs, labeled_mask=few, rng=0)
    assert picks[0] >= 30  # coverage: the cluster without labels, not the unsure samples
    same = strategies.select("typiclust", 1, features=x, labeled_mask=few, rng=0)
    assert picks.tolist() == same.tolist()
    many = np.zeros(60, bool)
    many[:6] = True  # 6 labels of 2 classes: margin
    picks = strategies.select("auto", 3, features=x, probs=probs, labeled_mask=many, rng=0)
    assert picks.tolist() == [55, 56, 57]  # the smallest margins, smallest first
    # No model yet (no probs): coverage, whatever the count.
    picks = strategies.select("auto", 1, features=x, labeled_mask=many, rng=0)
    assert (
        picks.tolist()
        == strategies.select("typiclust", 1, features=x, labeled_mask=many, rng=0).tolist()
    )


def test_optional_arrays_refuse_only_what_the_data_cannot_give(monkeypatch):
    from dal_widgets.strategies._registry import _REGISTRY

    monkeypatch.setitem(_REGISTRY, "_optional_committee", None)  # removed again at the end

    @strategies.register("_optional_committee", needs={"probs"}, optional={"member_probs"},
                         replace=True)  # fmt: skip
    def _optional_committee(probs, member_probs=None):
        """A test strategy (Settles 2009)."""
        return probs.max(1)

    assert (
        strategies.unusable_reason("_optional_committee", multi_label=False, ensemble_size=1)
        is None
    )
    assert "multi-label" in strategies.unusable_reason("auto", multi_label=True, ensemble_size=1)


def test_kmeans_with_several_runs_keeps_the_one_with_the_smallest_inertia():
    from dal_widgets.strategies._kmeans import kmeans

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(300, 4)).astype(np.float32))
    draws = np.random.default_rng(5)
    singles = [float(kmeans(x, 12, draws)[2].sum()) for _ in range(4)]
    best = float(kmeans(x, 12, np.random.default_rng(5), n_init=4)[2].sum())
    assert len(set(singles)) > 1  # the runs differ: which one is kept matters
    assert best == pytest.approx(min(singles))
    with pytest.raises(ValueError, match="'n_init'"):
        strategies.select(
            "typiclust", 2, features=x.numpy(), labeled_mask=np.zeros(300, bool), n_init=0
        )
