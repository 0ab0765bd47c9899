"""Report artefacts: ROC and PR curves, confusion matrix, feature importances (impurity and
mean |SHAP|), drift."""

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

from training.core.drift import MODERATE, SIGNIFICANT, Reference, level
from training.core.explain import Explanations, global_importance


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
    """The model's impurity (forest) or gain (boosted) importances, named after the
    preprocessed columns."""
    names = pipeline.named_steps["prep"].get_feature_names_out()
    model = pipeline.named_steps["forest"]
    members = getattr(model, "estimators_", None) if hasattr(model, "voting") else None
    importances = (
        np.mean([m.feature_importances_ for m in members], axis=0)  # a soft vote: the mean
        if members
        else model.feature_importances_
    )
    return pd.Series(importances, index=names).sort_values(ascending=False)


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


def write_shap_summary(
    explained: Explanations, frame: pd.DataFrame, out: Path, max_points: int = 2_000
) -> list[Path]:
    """The global picture of a model's reason codes over held-out rows: mean |SHAP| per
    feature (CSV and bar chart) and a beeswarm of every row's contributions, coloured by the
    feature's value (a categorical by its code)."""
    import shap

    out.mkdir(parents=True, exist_ok=True)
    importance = pd.Series(global_importance(explained), name="mean_abs_shap")
    csv = out / "shap_importance.csv"
    importance.to_csv(csv, index_label="feature")
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(importance) + 1))
    importance[::-1].plot.barh(ax=ax)
    ax.set_title(f"Mean |SHAP| (fraud probability), {len(frame):,} held-out transactions")
    bar = out / "shap_importance.png"
    fig.savefig(bar, dpi=100, bbox_inches="tight")
    plt.close(fig)
    values = frame[explained.columns].iloc[:max_points].copy()
    for col in values.columns:
        if not pd.api.types.is_numeric_dtype(values[col]):
            values[col] = pd.factorize(values[col])[0]
    shap.summary_plot(
        explained.contributions[:max_points],
        values.astype(float),
        feature_names=explained.columns,
        show=False,
        max_display=len(explained.columns),
    )
    swarm = out / "shap_beeswarm.png"
    plt.gcf().savefig(swarm, dpi=100, bbox_inches="tight")
    plt.close("all")
    return [csv, bar, swarm]


def write_drift_report(
    reference: Reference, columns: pd.DataFrame, out: Path, title: str = "Feature drift"
) -> Path:
    """HTML report: PSI per feature (worst first) and reference-vs-current bin shares (PNG)."""
    out.mkdir(parents=True, exist_ok=True)
    scores = reference.psi(columns)
    order = sorted(reference.features, key=lambda f: -scores[f.name])
    ncols = 3
    nrows = max(1, -(-len(order) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax, ref in zip(axes.flat, order, strict=False):
        counts = ref.counts(np.asarray(columns[ref.name]))
        current = counts / max(int(counts.sum()), 1)
        x = np.arange(ref.n_bins)
        ax.bar(x - 0.2, ref.expected, width=0.4, label="reference")
        ax.bar(x + 0.2, current, width=0.4, label="current")
        value = scores[ref.name]
        ax.set_title(f"{ref.name}\nPSI {value:.3f} ({level(value)})", fontsize=8)
        ax.set_xticks([])
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    png = out / "drift.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    rows = "\n".join(
        f"<tr class='{level(scores[f.name])}'><td>{f.name}</td><td>{f.kind}</td>"
        f"<td>{scores[f.name]:.4f}</td><td>{level(scores[f.name])}</td></tr>"
        for f in order
    )
    html = out / "drift.html"
    html.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
.significant{{background:#fdd}}.moderate{{background:#ffd}}</style></head><body>
<h1>{title}</h1>
<p>{len(columns):,} transactions compared with the model's training reference
({reference.n_rows:,} rows). PSI &lt; {MODERATE} stable, {MODERATE}-{SIGNIFICANT} moderate,
&gt; {SIGNIFICANT} significant.</p>
<table><tr><th>feature</th><th>kind</th><th>PSI</th><th>level</th></tr>
{rows}
</table>
<p><img src="{png.name}" alt="reference vs current bin shares per feature"></p>
</body></html>
"""
    )
    (out / "drift.json").write_text(json.dumps(scores, indent=2))
    return html
