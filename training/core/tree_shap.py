"""Exact path-dependent tree SHAP for a scikit-learn forest, compiled with numba.

The values are those of Lundberg et al.'s TreeSHAP (2018, "Consistent individualized feature
attribution for tree ensembles") that the ``shap`` package's TreeExplainer computes in C for
``feature_perturbation="tree_path_dependent"`` (tested equal to 1e-12). The computation differs:
a tree's output is a sum over its leaves, and each leaf's Shapley values have a closed form in
which features the row satisfies on the leaf's path and which it does not (a subset holding an
unsatisfied feature adds nothing), so every leaf is one pass over its path with elementary
symmetric polynomials — no divisions, no recursion — over the forest's leaves flattened into
arrays once per model. Measured on the demo champion (100 trees, depth 10, ~90 leaves a tree):
~1.4 ms a transaction against ~3-4 ms for ``shap``, which computes both classes
(``python -m tests.bench.run_bench``'s reason-code line; docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any

import numba
import numpy as np


@dataclass(frozen=True)
class FlatForest:
    """Every tree's nodes, concatenated; ``roots[t]`` is tree t's first node."""

    roots: np.ndarray  # int64 (trees,)
    left: np.ndarray  # int64, absolute node index, -1 at a leaf
    right: np.ndarray
    feature: np.ndarray  # int64
    threshold: np.ndarray  # float64: x <= threshold goes left
    value: np.ndarray  # float64: the fraud-class fraction / number of trees
    cover: np.ndarray  # float64: weighted training samples reaching the node
    max_depth: int
    base_value: float  # the forest's mean prediction (cover-weighted)

    @classmethod
    def of(cls, forest: Any, positive: int = 1) -> FlatForest:
        """Flatten a fitted RandomForestClassifier (the probability of class ``positive``)."""
        n = len(forest.estimators_)
        roots, parts = [], []
        offset = 0
        for est in forest.estimators_:
            t = est.tree_
            counts = t.value[:, 0, :]
            frac = counts[:, positive] / np.maximum(counts.sum(axis=1), 1e-300)
            left = np.where(t.children_left >= 0, t.children_left + offset, -1)
            right = np.where(t.children_right >= 0, t.children_right + offset, -1)
            parts.append((left, right, t.feature, t.threshold, frac / n, t.weighted_n_node_samples))
            roots.append(offset)
            offset += t.node_count
        cols = [np.concatenate([p[i] for p in parts]) for i in range(6)]
        value = cols[4].astype(np.float64)
        root_index = np.array(roots, dtype=np.int64)
        return cls(
            roots=root_index,
            left=cols[0].astype(np.int64),
            right=cols[1].astype(np.int64),
            feature=cols[2].astype(np.int64),
            threshold=cols[3].astype(np.float64),
            value=value,
            cover=cols[5].astype(np.float64),
            max_depth=max(int(e.tree_.max_depth) for e in forest.estimators_),
            base_value=float(_expected(root_index, cols[0], cols[1], value, cols[5]).sum()),
        )


def _expected(roots: Any, left: Any, right: Any, value: Any, cover: Any) -> np.ndarray:
    """Per tree, the cover-weighted mean of its leaf values (its expected prediction)."""
    out = np.zeros(len(roots))
    for k, root in enumerate(roots):
        stack = [int(root)]
        total = 0.0
        while stack:
            node = stack.pop()
            if left[node] < 0:
                total += value[node] * cover[node]
            else:
                stack += [int(left[node]), int(right[node])]
        out[k] = total / cover[root]
    return out


@dataclass(frozen=True)
class LeafPaths:
    """Every leaf's path as its unique features: on feature ``feature[l, j]`` the leaf needs
    ``lo < x <= hi`` and takes the fraction ``zero`` of the training cover when x is unknown
    (the product over that feature's splits on the path). Leaves of value 0 (no fraud among
    their training samples: ~40 % of a fraud forest's) are left out: they add nothing."""

    feature: np.ndarray  # int64 (leaves, depth), -1 padding
    lo: np.ndarray  # float64
    hi: np.ndarray
    zero: np.ndarray
    length: np.ndarray  # int64: unique features on the path
    value: np.ndarray  # float64: the leaf's fraud fraction / number of trees
    weights: np.ndarray  # (depth + 1, depth): w[d, s] = s! (d - s - 1)! / d!

    @classmethod
    def of(cls, flat: FlatForest) -> LeafPaths:
        rows: list[tuple[list[int], list[float], list[float], list[float], float]] = []
        for root in flat.roots:
            stack: list[tuple[int, dict[int, tuple[float, float, float]]]] = [(int(root), {})]
            while stack:
                node, path = stack.pop()
                if flat.left[node] < 0:
                    if flat.value[node] == 0.0:  # every term of its values is a multiple of 0
                        continue
                    feats = list(path)
                    rows.append(
                        (
                            feats,
                            [path[f][0] for f in feats],
                            [path[f][1] for f in feats],
                            [path[f][2] for f in feats],
                            float(flat.value[node]),
                        )
                    )
                    continue
                f, thr, w = int(flat.feature[node]), float(flat.threshold[node]), flat.cover[node]
                low, high, z = path.get(f, (-np.inf, np.inf, 1.0))
                left, right = int(flat.left[node]), int(flat.right[node])
                stack.append((left, {**path, f: (low, min(high, thr), z * flat.cover[left] / w)}))
                stack.append((right, {**path, f: (max(low, thr), high, z * flat.cover[right] / w)}))
        depth = max(1, max((len(r[0]) for r in rows), default=1))
        n = len(rows)
        feature = np.full((n, depth), -1, dtype=np.int64)
        lo = np.zeros((n, depth))
        hi = np.zeros((n, depth))
        zero = np.ones((n, depth))
        length = np.zeros(n, dtype=np.int64)
        value = np.zeros(n)
        for k, (fs, los, his, zs, v) in enumerate(rows):
            d = len(fs)
            feature[k, :d], lo[k, :d], hi[k, :d], zero[k, :d] = fs, los, his, zs
            length[k], value[k] = d, v
        weights = np.zeros((depth + 1, depth))
        for d in range(1, depth + 1):
            for s in range(d):
                weights[d, s] = 1.0 / (d * comb(d - 1, s))  # s! (d-s-1)! / d!
        return cls(feature, lo, hi, zero, length, value, weights)

    def shap_values(self, X: np.ndarray) -> np.ndarray:
        """(rows, inputs) SHAP values of the positive class for the forest's input ``X``."""
        # float32 as the forest compares it, then float64 once (not at every comparison)
        X = np.ascontiguousarray(np.asarray(X, dtype=np.float32), dtype=np.float64)
        phi = np.zeros(X.shape, dtype=np.float64)
        _leaf_shap(
            X, self.feature, self.lo, self.hi, self.zero, self.length, self.value,
            self.weights, phi,
        )  # fmt: skip
        return phi


# Reassociation and contraction only: the path bounds hold infinities (no "ninf"/"nnan").
FAST = {"reassoc", "contract", "arcp", "nsz"}


@numba.njit(cache=True, nogil=True, fastmath=FAST)
def _leaf_shap(X, feature, lo, hi, zero, length, value, weights, phi):
    """Per leaf, with A the path features x satisfies and B the others (z: zero fractions):
    a feature of B gets -v * prod(z_B) * G(A), one of A gets v * (1 - z_i) * prod(z_B) *
    G(A \\ i), where G(T) = sum_k w[d, k] * e_{|T|-k}(z_T) and e_m are the elementary
    symmetric polynomials of T's zero fractions (the Shapley sum over the subsets of A: a
    subset holding an unsatisfied feature contributes nothing)."""
    depth = feature.shape[1]
    in_a = np.zeros(depth, dtype=np.int64)
    in_b = np.zeros(depth, dtype=np.int64)
    e = np.zeros(depth + 1)
    ei = np.zeros(depth + 1)
    for r in range(X.shape[0]):
        x = X[r]
        out = phi[r]
        for leaf in range(feature.shape[0]):
            d = length[leaf]
            if d == 0:
                continue
            v = value[leaf]
            zb = 1.0
            na = 0
            nb = 0
            for j in range(d):
                xv = x[feature[leaf, j]]
                if lo[leaf, j] < xv and xv <= hi[leaf, j]:
                    in_a[na] = j
                    na += 1
                else:
                    in_b[nb] = j
                    nb += 1
                    zb *= zero[leaf, j]
            # e over the zero fractions of A
            e[0] = 1.0
            for m in range(1, na + 1):
                e[m] = 0.0
            for k in range(na):
                z = zero[leaf, in_a[k]]
                for m in range(k + 1, 0, -1):
                    e[m] += z * e[m - 1]
            if na < d:  # B is not empty: one value for all its features
                g = 0.0
                for s in range(na + 1):
                    g += weights[d, s] * e[na - s]
                share = -v * zb * g
                for k in range(nb):
                    out[feature[leaf, in_b[k]]] += share
            for k in range(na):  # each feature of A: e over A without it
                zi = zero[leaf, in_a[k]]
                ei[0] = 1.0
                for m in range(1, na):
                    ei[m] = e[m] - zi * ei[m - 1]
                g = 0.0
                for s in range(na):
                    g += weights[d, s] * ei[na - 1 - s]
                out[feature[leaf, in_a[k]]] += v * (1.0 - zi) * zb * g
