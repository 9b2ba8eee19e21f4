"""``session-ledger report html``: one self-contained page (inline CSS and SVG, no scripts,
no external assets) an analyst can open or mail: three charts and every report's tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from html import escape

import duckdb

from projections.analytics.reports import FAR_PAST, REPORTS, Table, Window, build, cell_text, valid_at

COLORS = ("#3366cc", "#dc3912", "#ff9900", "#109618")
W, H, PAD_L, PAD_B, PAD_T = 640, 270, 60, 90, 28
PLOT_H = H - PAD_B - PAD_T

Series = tuple[str, Sequence[float | int | None]]


@dataclass(frozen=True)
class Scale:
    """Value -> bar height: linear from 0 to a round top, or log10(1 + v) when values span
    several orders of magnitude (latencies), so small stages stay visible."""

    top: float
    log: bool

    @classmethod
    def fit(cls, peak: float, *, log: bool) -> Scale:
        if log:
            return cls(10 ** math.ceil(math.log10(max(peak, 1.0))), True)
        return cls(_nice(peak) if peak > 0 else 1.0, False)  # all zero (empty window): a 0..1 axis

    def height(self, v: float) -> float:
        if self.log:
            return PLOT_H * math.log10(1 + max(v, 0)) / math.log10(1 + self.top)
        return PLOT_H * v / self.top

    def ticks(self) -> list[float]:
        if self.log:
            return [0.0, *(10.0**k for k in range(1, round(math.log10(self.top)) + 1))]
        return [self.top * k / 4 for k in range(5)]


def _nice(peak: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= peak."""
    base = 10 ** math.floor(math.log10(peak))
    return float(next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= peak))


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    stacked: bool,
    unit: str,
    log: bool = False,
) -> str:
    """A plain SVG bar chart: grouped or stacked bars with a labelled y axis."""
    if not labels:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="empty">no data</p></figure>'
    values = [[float(v or 0) for v in vals] for _, vals in series]
    columns = list(zip(*values, strict=True))
    peak = max(sum(c) if stacked else max(c) for c in columns)
    scale = Scale.fit(peak, log=log and not stacked)
    slot = (W - PAD_L - 8) / len(labels)
    parts = [_axes(scale, unit)]
    every = max(1, len(labels) // 16)
    for i, label in enumerate(labels):
        parts.append(_bars(i, slot, list(columns[i]), scale, stacked))
        if i % every == 0:
            x, y = PAD_L + slot * (i + 0.5), H - PAD_B + 12
            parts.append(
                f'<text x="{x:.1f}" y="{y}" transform="rotate(35 {x:.1f},{y})" font-size="10">'
                f"{escape(label[:22])}</text>"
            )
    left = W - 100 * len(series)
    legend = "".join(
        f'<rect x="{left + 100 * k}" y="4" width="10" height="10" fill="{COLORS[k]}"/>'
        f'<text x="{left + 100 * k + 14}" y="13" font-size="11">{escape(name)}</text>'
        for k, (name, _) in enumerate(series)
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">'
    )
    return f"<figure><figcaption>{escape(title)}</figcaption>{svg}{legend}{''.join(parts)}</svg></figure>"


def _axes(scale: Scale, unit: str) -> str:
    out = []
    for value in scale.ticks():
        y = H - PAD_B - scale.height(value)
        out.append(f'<line x1="{PAD_L}" x2="{W - 4}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{value:g}</text>')
    note = " (log scale)" if scale.log else ""
    out.append(f'<text x="4" y="{PAD_T - 10}" font-size="10">{escape(unit)}{note}</text>')
    return "".join(out)


def _bars(i: int, slot: float, vals: list[float], scale: Scale, stacked: bool) -> str:
    out, base = [], float(H - PAD_B)
    width = slot * 0.8 / (1 if stacked else len(vals))
    for k, v in enumerate(vals):
        h = scale.height(v)
        x = PAD_L + slot * i + slot * 0.1 + (0 if stacked else width * k)
        y = base - h
        out.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" fill="{COLORS[k]}">'
            f"<title>{v:.4g}</title></rect>"
        )
        if stacked:
            base = y
    return "".join(out)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(cell_text(v))}</td>" for v in row) + "</tr>" for row in table.rows
    )
    return f"<h3>{escape(table.title)}</h3><table><tr>{head}</tr>{rows or ''}</table>"


def charts(conn: duckdb.DuckDBPyConnection, w: Window) -> list[str]:
    replay = build(conn, "replay", w)[0]
    hist = build(conn, "sessions", w)[1]
    latency = build(conn, "revocation", w)[0]
    return [
        bar_chart(
            f"Replay incidents over time (per {replay.rows[0][1] if replay.rows else 'period'})",
            _period_labels([r[0] for r in replay.rows]),
            [("incidents", [r[2] for r in replay.rows]), ("users", [r[3] for r in replay.rows])],
            stacked=False,
            unit="count",
        ),
        bar_chart(
            "Session duration histogram (censored = still active)",
            [r[0] for r in hist.rows],
            [("ended", [r[1] for r in hist.rows]), ("censored", [r[2] for r in hist.rows])],
            stacked=True,
            unit="sessions",
        ),
        bar_chart(
            "Revocation latency percentiles",
            [r[0] for r in latency.rows],
            [(p, [r[k] for r in latency.rows]) for k, p in ((2, "p50"), (3, "p90"), (4, "p99"))],
            stacked=False,
            unit="ms",
            log=True,
        ),
    ]


def _period_labels(periods: list[datetime]) -> list[str]:
    """``HH:MM`` when every period is on one day, else ``MM-DD HH:MM`` (or the date alone)."""
    if len({p.date() for p in periods}) <= 1:
        return [p.strftime("%H:%M") for p in periods]
    if all(p.hour == 0 and p.minute == 0 for p in periods):
        return [p.strftime("%Y-%m-%d") for p in periods]
    return [p.strftime("%m-%d %H:%M") for p in periods]


def render_html(conn: duckdb.DuckDBPyConnection, w: Window, source: str) -> str:
    travel, w = w.at, replace(w, at=None)  # the reports over the window, then the time travel
    sections = "".join(
        f"<section><h2>{escape(name)}</h2>{''.join(table_html(t) for t in build(conn, name, w))}</section>"
        for name in REPORTS
    )
    if w.whatif is not None:
        tables = "".join(table_html(t) for t in build(conn, "whatif", w))
        sections += f"<section><h2>what-if (policy dry-run)</h2>{tables}</section>"
    if travel is not None:
        tables = "".join(table_html(t) for t in valid_at(conn, travel))
        sections += f"<section><h2>valid at {escape(cell_text(travel))} UTC</h2>{tables}</section>"
    made = datetime.now(UTC).isoformat(timespec="seconds")
    since = "the first event" if w.since == FAR_PAST else cell_text(w.since)
    meta = f"window {since} .. {cell_text(w.until)} UTC · data: {source} · generated {made}"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>session-ledger analytics</title>"
        f"<style>{CSS}</style></head><body><h1>session-ledger analytics</h1>"
        f"<p class='meta'>{escape(meta)}</p><div class='charts'>{''.join(charts(conn, w))}</div>"
        f"{sections}</body></html>\n"
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
h1{margin-bottom:0}.meta{color:#666}
.charts{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;border:1px solid #eee;padding:.5em}figcaption{font-weight:600;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
.empty{color:#999}
"""
