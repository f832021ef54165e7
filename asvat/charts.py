"""Small, dependency-free SVG charts for reports read in public meetings and by analysts:
a line chart of series over periods and a grouped bar chart. Text is escaped; colours are
a colour-blind-safe palette; each chart carries a title and a description for screen
readers. Nothing is fetched from the internet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

#: Okabe–Ito, colour-blind safe.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
WIDTH, HEIGHT = 760, 340
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 36, 96


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)


def _frame(title: str, description: str, top: float) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title><desc>{escape(description)}</desc>",
        '<rect width="100%" height="100%" fill="#fff"/>',
        f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    plot_h = HEIGHT - TOP - BOTTOM
    for i in range(5):
        value = top * i / 4
        y = HEIGHT - BOTTOM - plot_h * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>'
        )
    return parts


def _labels(categories: Sequence[str], x_of: list[float]) -> list[str]:
    room = (WIDTH - LEFT - RIGHT) / max(len(categories), 1)
    if max((len(str(c)) for c in categories), default=0) * 6.5 <= room:  # level, centred
        return [
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
            f"{escape(str(c))}</text>"
            for c, x in zip(categories, x_of, strict=True)
        ]
    every = max(1, len(categories) // 12)
    return [
        f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="start" '
        f'transform="rotate(35 {x:.1f} {HEIGHT - BOTTOM + 14})">{escape(str(c)[:26])}</text>'
        for i, (c, x) in enumerate(zip(categories, x_of, strict=True))
        if i % every == 0
    ]


def _legend(names: Sequence[str]) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        y = TOP + 8 + i * 16
        colour = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<rect x="{WIDTH - RIGHT + 12}" y="{y - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{WIDTH - RIGHT + 26}" y="{y + 1}">{escape(name)}</text>'
        )
    return parts


def line_chart(
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    description: str = "",
) -> str:
    """Lines over ``categories`` (periods), one per series, with a legend."""
    top = _nice_max(max((v for values in series.values() for v in values), default=0))
    parts = _frame(title, description or title, top)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = max(len(categories), 1)
    x_of = [LEFT + plot_w * (i + 0.5) / count for i in range(len(categories))]
    for index, values in enumerate(series.values()):
        colour = PALETTE[index % len(PALETTE)]
        points = " ".join(
            f"{x:.1f},{HEIGHT - BOTTOM - plot_h * v / top:.1f}"
            for x, v in zip(x_of, values, strict=True)
        )
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
        )
    parts += _labels(categories, x_of) + _legend(list(series)) + ["</svg>"]
    return "".join(parts)


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    description: str = "",
) -> str:
    """Grouped bars: for each category, one bar per series, with a legend."""
    top = _nice_max(max((v for values in series.values() for v in values), default=0))
    parts = _frame(title, description or title, top)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    count = max(len(categories), 1)
    group = plot_w / count
    width = group * 0.8 / max(len(series), 1)
    x_of = [LEFT + group * (i + 0.5) for i in range(len(categories))]
    for index, (name, values) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        for i, value in enumerate(values):
            x = LEFT + group * i + group * 0.1 + width * index
            h = plot_h * value / top
            parts.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(str(categories[i]))} '
                f"{escape(name)}: {value:g}</title></rect>"
            )
    parts += _labels(categories, x_of) + _legend(list(series)) + ["</svg>"]
    return "".join(parts)
