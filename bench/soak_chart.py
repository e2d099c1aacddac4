#!/usr/bin/env python3
"""Draws a soak run's samples (the CSV of `tests/soak.sh --csv`) as an SVG chart:
gateway RSS, open descriptors and threads against time, each on its own panel, so a
trend (a leak) is visible at a glance. Standard library only.

    python3 bench/soak_chart.py soak.csv bench/results/soak-10min.svg
"""
import csv
import sys

WIDTH, PANEL_H, MARGIN_L, MARGIN_R, TOP = 720, 150, 70, 20, 30


def panel(y0, xs, ys, title, unit, color):
    # From zero: a leak should look as big as it is, not as big as the panel.
    lo, hi = 0.0, (max(ys) or 1.0) * 1.15
    x_max = max(xs) or 1.0
    plot_w, plot_h = WIDTH - MARGIN_L - MARGIN_R, PANEL_H - 40

    def px(x):
        return MARGIN_L + x / x_max * plot_w

    def py(y):
        return y0 + 25 + (1 - (y - lo) / (hi - lo)) * plot_h

    out = [f'<text x="{MARGIN_L}" y="{y0 + 15}" font-size="13" font-weight="bold">{title}</text>']
    out.append(f'<rect x="{MARGIN_L}" y="{y0 + 25}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>')
    for frac in (0, 0.5, 1):
        v = lo + (hi - lo) * frac
        out.append(f'<text x="{MARGIN_L - 6}" y="{py(v) + 4:.1f}" font-size="10" text-anchor="end">{v:,.1f} {unit}</text>')
    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.8"/>')
    return out


def main(src, dst):
    with open(src) as f:
        rows = list(csv.DictReader(f))
    xs = [float(r["seconds"]) for r in rows]
    series = [
        ("Gateway RSS", "MiB", "#1f77b4", [int(r["rss_bytes"]) / (1 << 20) for r in rows]),
        ("Open file descriptors", "", "#d62728", [float(r["fds"]) for r in rows]),
        ("Threads", "", "#2ca02c", [float(r["threads"]) for r in rows]),
        ("Connections", "", "#9467bd", [float(r["connections"]) for r in rows]),
    ]
    height = TOP + PANEL_H * len(series) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN_L}" y="20" font-size="15">shardcast soak: {max(xs) / 60:.0f} min, '
        f'{len(rows)} samples (x: seconds, 0 to {max(xs):.0f})</text>',
    ]
    for i, (title, unit, color, ys) in enumerate(series):
        out += panel(TOP + i * PANEL_H, xs, ys, title, unit, color)
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
