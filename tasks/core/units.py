"""Human-readable sizes, ages and times for reports (one place, so every report agrees)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["age", "old", "size", "utc"]


def age(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f}{unit}"
    return f"{seconds:.0f}s"


def old(seconds: float) -> str:
    """``2.0h old``, or ``dated in the future`` (a clock that ran ahead)."""
    return "dated in the future" if seconds < 0 else f"{age(seconds)} old"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
