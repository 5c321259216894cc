"""The last day's delivery attempts per hour as a small stacked bar chart, in inline SVG.

Pure: bars in, markup out. Colours come from the page's stylesheet (classes per status),
so the SVG carries no style attribute for the Content-Security-Policy to refuse.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from ..delivery.results import Status
from .status import HourBar

WIDTH, HEIGHT = 720, 160
_LEFT, _BOTTOM, _TOP = 36, 20, 8
_STACK = (Status.DELIVERED, Status.DEFERRED, Status.BOUNCED)  # bottom to top


def hourly_chart(bars: Sequence[HourBar]) -> str:
    peak = max((sum(bar.counts.values()) for bar in bars), default=0)
    scale = max(peak, 1)
    plot_height = HEIGHT - _BOTTOM - _TOP
    slot = (WIDTH - _LEFT) / max(len(bars), 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
        ' role="img" aria-label="delivery attempts per hour by outcome, last 24 hours">',
        f'<line class="axis" x1="{_LEFT}" y1="{HEIGHT - _BOTTOM}" x2="{WIDTH}"'
        f' y2="{HEIGHT - _BOTTOM}"/>',
        f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + 10}" text-anchor="end">{peak}</text>',
        f'<text class="tick" x="{_LEFT - 4}" y="{HEIGHT - _BOTTOM}" text-anchor="end">0</text>',
    ]
    for i, bar in enumerate(bars):
        x = _LEFT + i * slot + 1
        y = float(HEIGHT - _BOTTOM)
        label = time.strftime("%H:00", time.gmtime(bar.start))
        words = ", ".join(f"{bar.counts.get(s, 0)} {s.value}" for s in _STACK)
        parts.append(f"<g><title>{escape(label)} UTC: {escape(words)}</title>")
        for status in _STACK:
            n = bar.counts.get(status, 0)
            if not n:
                continue
            height = n / scale * plot_height
            y -= height
            parts.append(
                f'<rect class="bar {status.value}" x="{x:.1f}" y="{y:.1f}"'
                f' width="{slot - 2:.1f}" height="{height:.1f}"/>'
            )
        parts.append("</g>")
        if i % 6 == 0:
            parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 5}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
