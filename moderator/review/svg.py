"""Small inline SVG charts rendered by the server (no script, no CDN, no style attribute).

The strict CSP (review/app.py: style-src 'self', script-src 'self') allows inline SVG markup:
shapes are placed with geometry attributes and coloured by classes from static/style.css,
never by a style attribute. Every text that comes from data is escaped; each chart has a
`<title>` and an aria-label so it reads as an image with a description.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from markupsafe import Markup, escape

MAX_POINTS = 240  # of a precision curve: about one per pixel of its width
MAX_DOTS = 60  # a dot (with its value as a tooltip) per reviewed score, while there are few


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") or "0"


def _open(width: float, height: float, css: str, label: str, *, stretch: bool = False) -> str:
    """`stretch`: a bar without text fills the width its CSS gives it (not scaled down to keep its shape)."""
    text = escape(label)
    aspect = "none" if stretch else "xMinYMin meet"
    return (
        f'<svg class="chart {css}" viewBox="0 0 {_num(width)} {_num(height)}" role="img" aria-label="{text}" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="{aspect}"><title>{text}</title>'
    )


def _rect(x: float, y: float, w: float, h: float, css: str, title: str = "") -> str:
    inner = f"<title>{escape(title)}</title>" if title else ""
    return (
        f'<rect class="{css}" x="{_num(x)}" y="{_num(y)}" width="{_num(max(w, 0))}" height="{_num(max(h, 0))}">'
        f"{inner}</rect>"
    )


def _text(x: float, y: float, text: str, css: str = "axis", anchor: str = "start") -> str:
    return f'<text class="{css}" x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}">{escape(text)}</text>'


def bar(parts: Sequence[tuple[str, int]], scale: int, label: str, width: float = 200) -> Markup:
    """One horizontal stacked bar: `parts` (css class, count) on a scale of `scale` (the largest row)."""
    height = 12.0
    out, x = [_open(width, height, "bar", label, stretch=True)], 0.0
    out.append(_rect(0, 0, width, height, "track"))
    for css, n in parts:
        w = width * n / scale if scale else 0
        out.append(_rect(x, 0, w, height, css, f"{n}"))
        x += w
    return Markup("".join(out) + "</svg>")


def score_bar(
    score: float, threshold: float | None, label: str, action: str | None = None, width: float = 200
) -> Markup:
    """A score on the one 0..1 scale every policy shares, with a tick where its class fires; a fired
    class's bar has its action's colour (block, review, tag)."""
    height = 14.0
    s = min(max(score, 0.0), 1.0)
    fired = threshold is not None and score >= threshold
    out = [_open(width, height, "score", label, stretch=True), _rect(0, 2, width, 10, "track")]
    kind = action if action in ("block", "review", "tag") else ""
    out.append(_rect(0, 2, width * s, 10, f"fill fired {kind}".strip() if fired else "fill"))
    for q in (0.25, 0.5, 0.75):
        out.append(
            f'<line class="grid" x1="{_num(width * q)}" x2="{_num(width * q)}" y1="2" y2="12" '
            'vector-effect="non-scaling-stroke"></line>'
        )
    if threshold is not None:
        t = width * min(max(threshold, 0.0), 1.0)
        out.append(
            f'<line class="threshold" x1="{_num(t)}" x2="{_num(t)}" y1="0" y2="{_num(height)}" '
            'vector-effect="non-scaling-stroke">'
            f"<title>fires at {threshold:.3f}</title></line>"
        )
    return Markup("".join(out) + "</svg>")


def sparkline(values: Sequence[int], label: str, width: float = 150, height: float = 28) -> Markup:
    """One small column per day: the shape of a reviewer's month."""
    top = max(values, default=0) or 1
    step = width / max(len(values), 1)
    out = [_open(width, height, "spark", label), _rect(0, height - 1, width, 1, "base")]
    for i, v in enumerate(values):
        h = (height - 2) * v / top
        out.append(_rect(i * step + step * 0.15, height - 1 - h, step * 0.7, h, "s0", f"{v}"))
    return Markup("".join(out) + "</svg>")


def day_columns(days: Sequence[date], series: Sequence[tuple[str, str, Sequence[int]]], label: str) -> Markup:
    """Columns per day, one per series (name, css class, values), with a legend and a few dates."""
    width, height, left, top, bottom = 720.0, 190.0, 36.0, 22.0, 20.0
    plot_w, plot_h = width - left - 4, height - top - bottom
    peak = max((v for _, _, values in series for v in values), default=0) or 1
    n, k = max(len(days), 1), max(len(series), 1)
    slot = plot_w / n
    out = [_open(width, height, "days", label)]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{_num(left)}" x2="{_num(width - 4)}" y1="{_num(y)}" y2="{_num(y)}"></line>')
        out.append(_text(left - 4, y + 4, str(round(peak * frac)), anchor="end"))
    for j, (name, css, values) in enumerate(series):
        x = left + j * 130
        out.append(_rect(x, 4, 10, 10, css) + _text(x + 14, 13, name, "legend"))
        for i, v in enumerate(values):
            h = plot_h * v / peak
            bx = left + i * slot + slot * 0.1 + j * slot * 0.8 / k
            out.append(_rect(bx, top + plot_h - h, slot * 0.8 / k, h, css, f"{days[i].isoformat()}: {v} {name}"))
    marks = sorted(range(n - 1, -1, -7)) if days else []  # weekly, counted back from today
    for i in marks:
        out.append(_text(left + (i + 0.5) * slot, height - 5, days[i].strftime("%m-%d"), anchor="middle"))
    return Markup("".join(out) + "</svg>")


def precision_curve(
    curve: Sequence[tuple[float, float]], target: float, suggested: float | None, fires_at: float | None, label: str
) -> Markup:
    """Reviewed precision if the class fired from threshold x (0..1), the target line, and the thresholds."""
    width, height, left, top, bottom = 260.0, 150.0, 30.0, 8.0, 20.0
    plot_w, plot_h = width - left - 8, height - top - bottom

    def px(t: float) -> float:
        return left + plot_w * min(max(t, 0.0), 1.0)

    def py(p: float) -> float:
        return top + plot_h * (1 - min(max(p, 0.0), 1.0))

    out = [_open(width, height, "curve", label), _rect(left, top, plot_w, plot_h, "track")]
    for v in (0.0, 0.5, 1.0):
        out.append(_text(left - 4, py(v) + 4, _num(v), anchor="end"))
        out.append(_text(px(v), height - 5, _num(v), anchor="middle"))
    ty = py(target)
    out.append(
        f'<line class="target" x1="{_num(left)}" x2="{_num(left + plot_w)}" y1="{_num(ty)}" y2="{_num(ty)}">'
        f"<title>target precision {target:.2f}</title></line>"
    )
    # A step: any threshold in (previous score, t] fires the same items as t, so has t's precision.
    # Thousands of reviewed scores draw no better than MAX_POINTS of them (evenly by rank, ends kept).
    ordered = sorted(curve)
    if len(ordered) > MAX_POINTS:
        step = (len(ordered) - 1) / (MAX_POINTS - 1)
        ordered = [ordered[round(i * step)] for i in range(MAX_POINTS)]
    points: list[str] = []
    previous = 0.0
    for t, p in ordered:
        points += [f"{_num(px(previous))},{_num(py(p))}", f"{_num(px(t))},{_num(py(p))}"]
        previous = t
    if points:
        out.append(f'<polyline class="line" points="{" ".join(points)}"></polyline>')
        out.extend(
            f'<circle class="dot" cx="{_num(px(t))}" cy="{_num(py(p))}" r="2.5">'
            f"<title>from {t:.3f}: precision {p:.2f}</title></circle>"
            for t, p in (curve if len(curve) <= MAX_DOTS else ())
        )
    for value, css, name in ((fires_at, "now", "fires now at"), (suggested, "suggested", "suggested")):
        if value is not None:
            x = px(value)
            out.append(
                f'<line class="{css}" x1="{_num(x)}" x2="{_num(x)}" y1="{_num(top)}" y2="{_num(top + plot_h)}">'
                f"<title>{name} {value:.3f}</title></line>"
            )
    return Markup("".join(out) + "</svg>")
