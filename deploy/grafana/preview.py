"""Draw the dashboard's panels from a live Prometheus into a PNG, for a look without Grafana.

    python deploy/grafana/preview.py --prometheus http://127.0.0.1:9090 --minutes 5 \
        --out deploy/grafana/nnserve-dashboard.png

Each panel's PromQL runs through Prometheus' range-query API with Grafana's variables set
to "all" (``$__rate_interval`` as given); stat panels show their last value. Needs
matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import httpx

DASHBOARD = Path(__file__).parent / "dashboards" / "nnserve.json"


def _series(prometheus: str, expr: str, start: float, end: float, step: float) -> list:
    answer = httpx.get(prometheus + "/api/v1/query_range", timeout=30, params={
        "query": expr, "start": start, "end": end, "step": step}).json()
    if answer.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {answer.get('error')}")
    return answer["data"]["result"]


def _legend(template: str, labels: dict) -> str:
    return "".join(labels.get(part, "") if i % 2 else part
                   for i, part in enumerate(template.replace("}}", "{{").split("{{")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--rate-interval", default="30s")
    parser.add_argument("--out", default=str(DASHBOARD.with_name("nnserve-dashboard.png")))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(DASHBOARD.read_text())
    variables = {"$__rate_interval": args.rate_interval, "$model": ".+", "$version": ".+"}
    end = time.time()
    start = end - args.minutes * 60
    step = max(1.0, (end - start) / 200)
    panels = board["panels"]
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3 * rows))
    for axis, panel in zip(axes.flat, panels, strict=False):
        axis.set_title(panel["title"], fontsize=9)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(name, value)
            for series in _series(args.prometheus, expr, start, end, step):
                times = [float(t) - end for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                label = _legend(target.get("legendFormat", ""), series["metric"])
                if panel["type"] == "stat":
                    shown = "" if unit in ("short", "bool", "none") else unit
                    axis.text(0.5, 0.5, f"{values[-1]:.4g} {shown}", ha="center", va="center",
                              fontsize=22, transform=axis.transAxes)
                    axis.set_axis_off()
                else:
                    axis.plot(times, values, label=label, linewidth=1)
        if panel["type"] != "stat":
            axis.set_xlabel("seconds before now", fontsize=7)
            axis.set_ylabel(unit, fontsize=7)
            axis.tick_params(labelsize=7)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=6, loc="upper left")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_axis_off()
    figure.suptitle(f"{board['title']} (drawn from Prometheus at {args.prometheus})")
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
