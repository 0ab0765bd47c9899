"""Render a dashboard's panels to one PNG from live Prometheus data (no Grafana needed).

    python monitoring/grafana/render.py --prometheus http://127.0.0.1:9090 --minutes 30

For people without a Grafana at hand and for the docs previews: every panel's queries are
run as range queries and drawn as lines (stat panels show their last value).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return list(body["data"]["result"])


def legend(template: str, labels: dict[str, str]) -> str:
    out = template or ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__")
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out or "value"


def render(dashboard: dict[str, Any], prometheus: str, minutes: float, out: Path) -> Path:
    """One PNG with a subplot per (non-row) panel."""
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 300)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel.get("targets", []):
            for series in query_range(prometheus, target["expr"], start, end, step):
                ts = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                name = legend(target.get("legendFormat", ""), series["metric"])[:40]
                ax.plot(ts, ys, lw=1, label=name)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(f"{panel['title']}" + (f" [{unit}]" if unit else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("minutes ago", fontsize=7)
        _, labels = ax.get_legend_handles_labels()
        if 0 < len(labels) <= 8:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(dashboard["title"], fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("reports/dashboards"))
    args = parser.parse_args()
    for path in sorted(DASHBOARDS.glob("*.json")):
        png = render(
            json.loads(path.read_text()),
            args.prometheus,
            args.minutes,
            args.out / f"{path.stem}.png",
        )
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
