"""``ktstr compare --html FILE``: one self-contained page a reviewer opens
from a CI artifact: the comparison table and, per metric, every run of A
and B as a strip plot over a box plot (matplotlib, inlined as SVG)."""

from __future__ import annotations

import html
import io
from typing import Any

from ktstr.evaluate.compare import Change, case_key, metrics

STYLE = """body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd}
td.n{text-align:right;font-family:monospace}.worse{color:#b00}.better{color:#070}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots figure{margin:0}"""


Runs = list[tuple[str, dict[str, float]]]  # (case, metrics) of every run


def _measured(docs: list[dict[str, Any]]) -> Runs:
    out = []
    for d in docs:
        key = case_key(d)
        out.append((f"{key[0]} [{key[1]}]", metrics(d)))
    return out


def _runs(runs: Runs, case: str, metric: str) -> list[float]:
    return [m[metric] for c, m in runs if c == case and metric in m]


def _plot(metric: str, a: list[float], b: list[float], labels: tuple[str, str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=100)
    ax.boxplot([a, b], widths=0.5, showfliers=False)
    for i, values in enumerate((a, b), start=1):
        xs = [i + 0.12 * ((k % 5) - 2) / 2 for k in range(len(values))]
        ax.scatter(xs, values, s=12, alpha=0.7, zorder=3)
    ax.set_xticks([1, 2], [f"A\n{labels[0][:18]}", f"B\n{labels[1][:18]}"], fontsize=7)
    ax.set_title(metric, fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def render(
    changes: list[Change], a: list[dict[str, Any]], b: list[dict[str, Any]], labels: tuple[str, str]
) -> str:
    rows = []
    for c in changes:
        cls = c.verdict if c.verdict in ("better", "worse") else ""
        change = f"{c.change:+.1%}" if c.relative else f"{c.change:+.4g} abs"
        rows.append(
            f"<tr><td>{html.escape(c.case)}</td><td>{html.escape(c.metric)}</td>"
            f"<td class=n>{c.median_a:.4g}</td><td class=n>{c.median_b:.4g}</td>"
            f"<td class=n>{change}</td><td class=n>{c.p_adj:.3f}</td>"
            f"<td class={cls}>{c.verdict}</td></tr>"
        )
    ra, rb = _measured(a), _measured(b)
    plots = []
    for c in changes:
        svg = _plot(c.metric, _runs(ra, c.case, c.metric), _runs(rb, c.case, c.metric), labels)
        plots.append(f"<figure>{svg}</figure>")
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>ktstr compare</title>"
        f"<style>{STYLE}</style></head><body><h1>ktstr compare</h1>"
        f"<p>A: {html.escape(labels[0])} ({len(a)} runs)<br>B: {html.escape(labels[1])} "
        f"({len(b)} runs)</p><table><tr><th>case</th><th>metric</th><th>A median</th>"
        "<th>B median</th><th>change</th><th>p adj</th><th>verdict</th></tr>"
        + "".join(rows)
        + "</table><h2>Every run</h2><div class=plots>"
        + "".join(plots)
        + "</div></body></html>\n"
    )
