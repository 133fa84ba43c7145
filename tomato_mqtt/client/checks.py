"""Checks of what a script gives the client, where it gives it (no imports: light)."""

from __future__ import annotations

__all__ = ["seconds"]


def seconds(timeout: object) -> float:
    """A client's timeout, checked where it is given (``timeout="abc"`` failed only at
    the first call, as "unsupported operand type(s) for +")."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)
