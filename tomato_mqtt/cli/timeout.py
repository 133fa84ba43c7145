"""``--timeout``: seconds, or a duration with a unit; tomato's bare milliseconds refused.

tomato 2.2 counts ``--timeout`` in milliseconds, tomato-mqtt in seconds. Silently
reading a tomato script's ``--timeout 2000`` as 2000 s (or quietly as 2 s) would be
wrong either way, so a bare number of :data:`AMBIGUOUS_TIMEOUT` or more is refused with
the two ways to say it (``2000ms``, ``2000s``). Light to import (typer only when a
value is refused).
"""

from __future__ import annotations

__all__ = ["AMBIGUOUS_TIMEOUT", "parse_timeout", "seconds"]

AMBIGUOUS_TIMEOUT = 1000.0  # bare --timeout values from here up are refused (tomato's ms?)


def parse_timeout(text: str | float) -> float:
    """:func:`seconds` for typer: a refused value is a ``BadParameter``."""
    try:
        return seconds(text)
    except ValueError as e:
        import typer

        raise typer.BadParameter(str(e)) from None


def seconds(text: str | float) -> float:
    """``--timeout``: seconds, or with a unit (``500ms``, ``2s``); tomato's bare milliseconds
    (``--timeout 2000``) are refused as ambiguous instead of waiting 2000 s.

    tomato 2.2 counts ``--timeout`` in milliseconds, tomato-mqtt in seconds. A bare number
    below :data:`AMBIGUOUS_TIMEOUT` is seconds; a bare number from there up is almost
    surely a tomato script's milliseconds, so it is refused with the two ways to say it.
    """
    if isinstance(text, (int, float)):
        return float(text)
    raw = text.strip().lower()
    scale = 1.0
    for unit, factor in (("ms", 0.001), ("s", 1.0)):
        if raw.endswith(unit):
            raw, scale = raw[: -len(unit)].strip(), factor
            break
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration: give seconds (5, 0.5) or a unit (500ms, 2s)"
        ) from None
    if value <= 0:
        raise ValueError(f"{text!r}: the timeout must be positive")
    if scale == 1.0 and raw == text.strip() and value >= AMBIGUOUS_TIMEOUT:
        raise ValueError(
            f"{text} is ambiguous: tomato-mqtt counts --timeout in seconds, tomato 2.2 in "
            f"milliseconds; write {text}ms (tomato's meaning) or {text}s"
        )
    return value * scale
