"""``--timeout``: seconds, or a duration with a unit; tomato's bare milliseconds refused.

tomato 2.2 counts ``--timeout`` in milliseconds, tomato-mqtt in seconds. Silently
reading a tomato script's ``--timeout 2000`` as 2000 s (or quietly as 2 s) would be
wrong either way, so a bare number above :data:`AMBIGUOUS_TIMEOUT` is refused with the
two ways to say it (``2000ms``, ``2000s``). Light to import (typer only when a value is
refused).
"""

from __future__ import annotations

__all__ = ["AMBIGUOUS_TIMEOUT", "parse_timeout", "seconds"]

#: bare --timeout values above this are refused as ambiguous. tomato's values are
#: milliseconds, typically 500 to 10000 (its default 3000), while no CLI wait here needs
#: more than a minute written bare (the longest default: ketchup snapshot's 60 s); a
#: longer one says its unit (``tomato start -t 120s``). ``--timeout 500`` from a tomato
#: script waited 500 s before (only 1000 and up were refused: an outside audit).
AMBIGUOUS_TIMEOUT = 60.0


def parse_timeout(text: str | float) -> float:
    """:func:`seconds` for typer: a refused value is a ``BadParameter``."""
    try:
        return seconds(text)
    except ValueError as e:
        import typer

        raise typer.BadParameter(str(e)) from None


def seconds(text: str | float) -> float:
    """``--timeout``: seconds, or with a unit (``500ms``, ``2s``, ``1min``, ``1h``); tomato's
    bare milliseconds (``--timeout 2000``) are refused as ambiguous instead of waiting
    2000 s.

    tomato 2.2 counts ``--timeout`` in milliseconds, tomato-mqtt in seconds. A bare number
    up to :data:`AMBIGUOUS_TIMEOUT` is seconds; a bare number above it is likely a tomato
    script's milliseconds, so it is refused with the two ways to say it.
    """
    if isinstance(text, (int, float)):
        return float(text)
    raw = text.strip().lower()
    scale = 1.0
    # (min and h as payloads take them: "-t 1min" was refused, "2 min" in a payload not)
    for unit, factor in (("ms", 0.001), ("min", 60.0), ("s", 1.0), ("h", 3600.0)):
        if raw.endswith(unit):
            raw, scale = raw[: -len(unit)].strip(), factor
            break
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration: give seconds (5, 0.5) or a unit (500ms, 2s, 1min, 1h)"
        ) from None
    if value <= 0:
        raise ValueError(f"{text!r}: the timeout must be positive")
    if scale == 1.0 and raw == text.strip() and value > AMBIGUOUS_TIMEOUT:
        raise ValueError(
            f"{text} is ambiguous: tomato-mqtt counts --timeout in seconds, tomato 2.2 in "
            f"milliseconds, and a bare number above {AMBIGUOUS_TIMEOUT:g} is not taken as "
            f"either; write {text}ms (tomato's meaning) or {text}s"
        )
    return value * scale
