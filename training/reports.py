"""Training artefacts: ROC and PR curves, confusion matrix, feature importances."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from imblearn.pipeline import Pipeline
from sklearn import metrics as skm


def write_curves(labels: np.ndarray, scores: np.ndarray, out: Path) -> list[Path]:
    """ROC and precision-recall curves as PNG."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {skm.roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (hold-out)")
    ax.legend(loc="lower right")
    paths.append(out / "roc_curve.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(recall, precision, label=f"AP {skm.average_precision_score(labels, scores):.3f}")
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall (hold-out)")
    ax.legend(loc="upper right")
    paths.append(out / "pr_curve.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def write_confusion(
    labels: np.ndarray, scores: np.ndarray, threshold: float, out: Path
) -> list[Path]:
    """Confusion matrix at the decision threshold, as JSON and PNG."""
    out.mkdir(parents=True, exist_ok=True)
    cm = skm.confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1])
    js = out / "confusion_matrix.json"
    js.write_text(
        json.dumps(
            {
                "threshold": threshold,
                "tn": int(cm[0, 0]),
                "fp": int(cm[0, 1]),
                "fn": int(cm[1, 0]),
                "tp": int(cm[1, 1]),
            },
            indent=2,
        )
    )
    fig, ax = plt.subplots(figsize=(4, 4))
    skm.ConfusionMatrixDisplay(cm, display_labels=["genuine", "fraud"]).plot(ax=ax, colorbar=False)
    ax.set_title(f"Threshold {threshold:.3f}")
    png = out / "confusion_matrix.png"
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [js, png]


def feature_importances(pipeline: Pipeline) -> pd.Series:
    """Impurity importances of the forest, named after the preprocessed columns."""
    names = pipeline.named_steps["prep"].get_feature_names_out()
    forest = pipeline.named_steps["forest"]
    return pd.Series(forest.feature_importances_, index=names).sort_values(ascending=False)


def write_importances(pipeline: Pipeline, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    imp = feature_importances(pipeline)
    csv = out / "feature_importances.csv"
    imp.rename("importance").to_csv(csv, index_label="feature")
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(imp) + 1))
    imp[::-1].plot.barh(ax=ax)
    ax.set_title("Feature importances (mean decrease in impurity)")
    png = out / "feature_importances.png"
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [csv, png]
