"""What the page gets of each wire message: every field named here, by attribute.

A field renamed in ``wire/messages.py`` is then a type error in this file (mypy), not a
silently empty cell in the browser; the page's own protocol stays as documented in
docs/dashboard.md whatever the wire calls things.
"""

from __future__ import annotations

from typing import Any

from tomato_mqtt.wire.messages import ComponentMeta, ComponentStatus, JobEvent

__all__ = ["event_view", "meta_view", "status_view"]


def event_view(ev: JobEvent) -> dict[str, Any]:
    return {
        "event": ev.event,
        "time": ev.time,
        "role": ev.role,
        "task": ev.task,
        "status": ev.status,
        "detail": ev.detail,
    }


def status_view(st: ComponentStatus) -> dict[str, Any]:
    return {
        "name": st.name,
        "node": st.node,
        "state": st.state,
        "job": st.job,
        "task": st.task,
        "task_name": st.task_name,
        "technique": st.technique,
        "attrs": st.attrs,
        "error": st.error,
    }


def meta_view(m: ComponentMeta) -> dict[str, Any]:
    return {
        "name": m.name,
        "device": m.device,
        "driver": m.driver,
        "address": m.address,
        "channel": m.channel,
        "node": m.node,
        "registered": m.registered,
        "error": m.error,
        "attrs": {k: a.model_dump(mode="json") for k, a in m.attrs.items()},
        "capabilities": m.capabilities,
        "constants": m.constants,
    }
