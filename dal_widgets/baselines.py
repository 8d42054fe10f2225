"""What a user might run instead of the loop: a scikit-learn baseline that uses the pool.

Ten lines of scikit-learn, no model and no loop: at each budget ``n``, the ``n`` samples
nearest to k-means centroids are labeled, ``LabelSpreading(kernel="knn")`` spreads their
labels over the pool, and a 5-nearest-neighbour classifier fitted on the spread labels is
scored on the held-out split. Inputs with more than 100 features go through PCA to 50 first
(fitted on the pool). It is strong where neighbours in the input space share classes (0.96
held-out accuracy with 30 labels on digits), which makes it the bar an active-learning loop
has to clear on such data (``benchmarks/label_efficiency.py``, ``python -m dal_widgets demo``).

Its rows have the shape of :class:`~dal_widgets.simulation.SimulationResult` records, so they
join a simulation's records: ``result.records += label_spreading_baseline(ds, ...)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from dal_widgets._checks import check_int, param_error
from dal_widgets.data import Dataset

__all__ = ["BASELINE", "label_spreading_baseline"]

#: The baseline's name in records and tables.
BASELINE = "sklearn-spreading"

#: Inputs with more features than this go through PCA first.
PCA_ABOVE = 100


def label_spreading_baseline(
    dataset: Dataset,
    budgets: Iterable[int],
    seeds: int | Iterable[int] = 1,
    *,
    neighbors: int = 7,
    vote: int = 5,
) -> list[dict[str, Any]]:
    """The baseline's held-out accuracy at each budget, for each seed.

    Parameters
    ----------
    dataset : Dataset
        Needs ``targets`` (the labels it is given) and a held-out split. Its raw inputs are
        flattened (an image folder is read whole).
    budgets : iterable of int
        Label counts, each at least 1 and at most the pool size.
    seeds : int or iterable of int
        ``3`` means seeds 0, 1, 2; each seeds k-means.
    neighbors, vote : int
        k of the spreading's graph and of the classifier.

    Returns
    -------
    list of dict
        One record per (seed, budget): ``strategy`` (:data:`BASELINE`), ``seed``, ``round``,
        ``labels``, ``accuracy``, ``train_s`` (spreading and the classifier), ``infer_s`` (0),
        ``select_s`` (k-means), ``seconds``, ``kappa`` (None) and ``distinct_picks`` (fewer
        than ``labels`` when two centroids share their nearest sample).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import pairwise_distances_argmin
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.semi_supervised import LabelSpreading

    where = "label_spreading_baseline"
    if dataset.targets is None or dataset.X_eval is None:
        raise param_error("dataset", where, "a Dataset with targets and a held-out split", dataset)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    n_pool = len(dataset)
    sizes = [check_int(b, "budgets", where, lo=1, hi=n_pool) for b in budgets]
    neighbors = check_int(neighbors, "neighbors", where, lo=1)
    vote = check_int(vote, "vote", where, lo=1)
    X = np.asarray(dataset.X, dtype=np.float32).reshape(n_pool, -1)
    Xe = np.asarray(dataset.X_eval, dtype=np.float32).reshape(dataset.n_eval, -1)
    y, ye = np.asarray(dataset.targets), np.asarray(dataset.y_eval)
    if X.shape[1] > PCA_ABOVE:
        reduce = PCA(50, random_state=0).fit(X)
        X, Xe = reduce.transform(X), reduce.transform(Xe)
    records = []
    for seed in seed_list:
        for rnd, n in enumerate(sizes):
            t0 = time.perf_counter()
            km = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(X)
            picks = np.unique(pairwise_distances_argmin(km.cluster_centers_, X))
            t1 = time.perf_counter()
            seen = np.full(n_pool, -1)
            seen[picks] = y[picks]
            spread = LabelSpreading(kernel="knn", n_neighbors=neighbors).fit(X, seen)
            knn = KNeighborsClassifier(vote).fit(X, spread.transduction_)
            accuracy = float((knn.predict(Xe) == ye).mean())
            t2 = time.perf_counter()
            records.append(
                {
                    "strategy": BASELINE,
                    "seed": seed,
                    "round": rnd,
                    "labels": int(n),
                    "accuracy": accuracy,
                    "train_s": t2 - t1,
                    "infer_s": 0.0,
                    "select_s": t1 - t0,
                    "seconds": t2 - t0,
                    "kappa": None,
                    "distinct_picks": int(picks.size),
                }
            )
    return records
