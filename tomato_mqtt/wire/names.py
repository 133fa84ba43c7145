"""Naming a component as people do: the full name, ``device/channel``, or a slug.

A component's full name is tomato's ``driver:(address,channel)``; people know it as
``device/channel`` (``dev-counter/1``), and topics carry its slug. The matching here is
pure and light (no asyncio, no pydantic): the CLI's one-shot path, the client library
(``client/names.py``: asking the scheduler or the nodes' metas) and the dashboard use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tomato_mqtt import jsonlite
from tomato_mqtt.wire.slugs import slug

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "RESTARTING",
    "RETAINED_WAIT",
    "SCHEDULER_WAIT",
    "UnknownComponent",
    "announced_meta",
    "from_scheduler",
    "is_full_name",
    "known",
    "not_announced",
    "nothing_on",
    "pick",
]

#: how long a resolver waits for the retained metas that should be there (s)
RETAINED_WAIT = 2.0
#: the scheduler normally answers in milliseconds; without one, fall back to the metas
SCHEDULER_WAIT = 1.5
#: why a node whose status says ``offline`` with ``restarting`` is away, in its
#: components' errors ("node pc2 is offline (it is restarting)", as the scheduler's list
#: of components says it): a request to one of them waits its whole timeout for the node,
#: not the short wait for a stopped node's
RESTARTING = "it is restarting"


class UnknownComponent(LookupError):
    """No component has that name; the text names the known ones (code ``not_found``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown component"


def is_full_name(name: str) -> bool:
    """tomato's ``driver:(address,channel)``."""
    return ":(" in name and name.endswith(")")


def pick(want: str, comps: Sequence[Mapping[str, Any]]) -> str | None:
    """The full name of the component ``want`` names among ``comps`` (objects with
    ``name``, ``device``, ``channel``): its full name, ``device/channel``, its slug, or
    the device's name when the device has one channel only."""
    for c in comps:
        if want == c.get("name"):
            return str(c["name"])
    for c in comps:
        if want == f"{c.get('device')}/{c.get('channel')}" or want == slug(str(c.get("name"))):
            return str(c["name"])
    of_device = [c for c in comps if c.get("device") == want]
    if len(of_device) == 1:
        return str(of_device[0]["name"])
    return None


def known(comps: Sequence[Mapping[str, Any]]) -> str:
    """The components as people name them: ``device/channel = full name; ...``."""
    names = sorted(f"{c.get('device')}/{c.get('channel')} = {c.get('name')}" for c in comps)
    return "; ".join(names) or "none"


def did_you_mean(want: str, names: Sequence[str]) -> str:
    """ ": did you mean 'x'?" for the one of ``names`` a typo away from ``want`` ("" if
    none)."""
    near = _closest(want, names)
    return "" if near is None else f": did you mean {near!r}?"


def _closest(want: str, names: Sequence[str]) -> str | None:
    """The one of ``names`` a typo away from ``want``: one that differs only in its
    numbers is not a typo (`pip-counter-9` of pip-counter-1..4 is a wrong number, which
    the known names show)."""
    import re

    from tomato_mqtt.errors import nearest  # (on the error path only: passata's is light)

    near = nearest(want, sorted(set(names)))
    if near is None or re.sub(r"\d+", "#", near) == re.sub(r"\d+", "#", want):
        return None
    return near


def near_name(want: str, comps: Sequence[Mapping[str, Any]]) -> str:
    """:func:`did_you_mean` for a component's name in the form it was given: a full
    name among the full names, ``device/channel`` (or a device) by its device."""
    if is_full_name(want):
        return did_you_mean(want, [str(c.get("name")) for c in comps])
    device, sep, channel = want.partition("/")
    devices = {str(c.get("device")) for c in comps}
    if device in devices:  # a wrong channel: the known names say which there are
        return ""
    near = _closest(device, sorted(devices))
    return "" if near is None else f": did you mean {near + sep + channel!r}?"


def from_scheduler(want: str, reply: Any) -> str | None:
    """The full name of ``want`` given the scheduler's ``status components`` reply (a
    ``Reply`` or None when none came): raises :class:`UnknownComponent` when the
    scheduler knows no such component; without its answer a full name is taken as is,
    and None means: ask the nodes' metas."""
    data = getattr(reply, "data", None)
    if reply is not None and getattr(reply, "success", False) and isinstance(data, Mapping | list):
        rows = data.values() if isinstance(data, Mapping) else data  # name -> object
        comps = [c for c in rows if isinstance(c, Mapping)]
        name = pick(want, comps)
        if name is None:
            raise UnknownComponent(
                f"unknown component {want!r}{near_name(want, comps)} (known: {known(comps)})"
            )
        return name
    return want if is_full_name(want) else None


def announced_meta(raw: bytes) -> dict[str, Any] | None:
    """A node's retained component meta as a resolver reads it (name, device, channel
    present), None for anything else on the meta topics."""
    try:
        meta = jsonlite.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(k), str) for k in ("name", "device", "channel")
    ):
        return None
    return meta


def nothing_on(instance: str) -> str:
    """Why a name could not be looked up when no scheduler answered and no node announced
    any component: not a wrong name, an instance with nothing on it (a wrong instance was
    told "unknown component": a newcomer's tour)."""
    return (
        "no scheduler answered and no node has announced any component on instance"
        f" {instance!r}: is tomato-mqtt running, on that instance?"
    )


def not_announced(want: str, metas: Sequence[Mapping[str, Any]]) -> UnknownComponent:
    """The refusal of a name when no scheduler answered and no node announced it."""
    return UnknownComponent(
        f"unknown component {want!r}: no scheduler answered and no node has announced "
        f"it (announced: {known(metas)})"
    )
