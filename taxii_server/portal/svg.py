"""A stacked bar chart as SVG text, drawn on the server: no charting library, no script.

Notifications per day, one colour per classification. The SVG carries a <title> and <desc>
for screen readers and the page shows the same figures as a table beside it.
"""

from __future__ import annotations

from html import escape

# Distinguishable for common colour blindness (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def stacked_bars(
    days: list[str], series: dict[str, list[int]], title: str, width: int = 720, height: int = 260
) -> str:
    """`series` maps a label to one count per day (same order as `days`)."""
    left, bottom, top, legend_w = 44, 40, 16, 230
    plot_w, plot_h = width - left - legend_w, height - bottom - top
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    peak = max([*totals, 1])
    bar_w = plot_w / max(len(days), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="plot-title plot-desc" class="plot">',
        f'<title id="plot-title">{escape(title)}</title>',
        f'<desc id="plot-desc">{escape(title)}: {len(days)} days, at most {peak} a day.</desc>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for i, day in enumerate(days):
        y = top + plot_h
        for n, (label, values) in enumerate(series.items()):
            h = plot_h * values[i] / peak
            if h <= 0:
                continue
            y -= h
            parts.append(
                f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[n % len(PALETTE)]}">'
                f"<title>{escape(day)} {escape(label)}: {values[i]}</title></rect>"
            )
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            parts.append(
                f'<text x="{left + (i + 0.5) * bar_w:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                f'font-size="10">{escape(day[5:])}</text>'
            )
    for n, label in enumerate(series):
        y = top + 14 * n
        colour = PALETTE[n % len(PALETTE)]
        parts.append(f'<rect x="{width - legend_w + 8}" y="{y}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - legend_w + 22}" y="{y + 9}" font-size="11">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def lines(
    days: list[str],
    series: dict[str, list[float | None]],
    title: str,
    unit: str,
    width: int = 720,
    height: int = 240,
) -> str:
    """One line per series over the days (a gap where a day has no value), for figures such as
    median hours to delivery."""
    left, bottom, top, legend_w = 52, 40, 16, 230
    plot_w, plot_h = width - left - legend_w, height - bottom - top
    values = [v for vs in series.values() for v in vs if v is not None]
    peak = max([*values, 1.0])
    step = plot_w / max(len(days) - 1, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="times-title times-desc" class="plot">',
        f'<title id="times-title">{escape(title)}</title>',
        f'<desc id="times-desc">{escape(title)}: {len(days)} days, at most {peak:.1f} {escape(unit)}.</desc>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">'
        f"{peak:.1f} {escape(unit)}</text>",
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for n, (label, vs) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        points = [
            (left + i * step, top + plot_h - plot_h * v / peak, v) for i, v in enumerate(vs) if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for (x, y, v), day in zip(
            points, [d for d, v in zip(days, vs, strict=True) if v is not None], strict=True
        ):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(day)} {escape(label)}: {v:.1f} {escape(unit)}</title></circle>"
            )
        y = top + 14 * n
        parts.append(f'<rect x="{width - legend_w + 8}" y="{y}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{width - legend_w + 22}" y="{y + 9}" font-size="11">{escape(label)}</text>')
    for i, day in enumerate(days):
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            parts.append(
                f'<text x="{left + i * step:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                f'font-size="10">{escape(day[5:])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
