"""How numbers read in the app: one rounding per kind of number, used by tiles, verdicts and charts
alike, so a number shown twice reads the same both times.

    >>> percent(0.173), percent(0.00377), ratio(3.874), signed(0.4206)
    ('17%', '0.38%', '3.9×', '+0.42')
"""

from __future__ import annotations

import math

PERCENT, RATIO, CORRELATION = "%", "×", "ρ"


def percent(share: float) -> str:
    """A probability or share in %: whole percent from 10 %, two significant digits below (a
    watermark moves P(carton) from 0.028% to 0.11%)."""
    value = 100 * share
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0%"
    if abs(value) >= 9.95:
        return f"{value:.0f}%"
    decimals = 1 - math.floor(math.log10(abs(value)))  # two significant digits
    return f"{value:.{decimals}f}%"


def ratio(value: float) -> str:
    """A ratio to one decimal with ×: "3.9×"."""
    return f"{value:.1f}×" if math.isfinite(value) else "n/a"


def signed(value: float) -> str:
    """A correlation to two decimals with its sign: "+0.42"."""
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def shown(value: float, unit: str) -> float:
    """The value as its text shows it: verdicts compare these, so they follow from the numbers shown."""
    if not math.isfinite(value):
        return value
    if unit == PERCENT:
        text = percent(value)
        return float(text.rstrip("%")) / 100
    if unit == RATIO:
        return round(value, 1)
    if unit == CORRELATION:
        return round(value, 2)
    return value


def number(value: float, unit: str = "") -> str:
    """A measurement in its unit: `percent`, `ratio` or `signed`; without a unit, three
    significant digits."""
    if unit == PERCENT:
        return percent(value)
    if unit == RATIO:
        return ratio(value)
    if unit == CORRELATION:
        return signed(value)
    return f"{value:.3g}" if math.isfinite(value) else "n/a"
