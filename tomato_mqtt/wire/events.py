"""What each job event's ``detail`` holds: declared once, here.

:class:`~tomato_mqtt.wire.messages.JobEvent` carries a free ``detail`` object; this
table says, per ``event`` kind, which keys it may hold and what they mean. The AsyncAPI
document (``x-event-details``) and the table in ``docs/topics.md`` come from it, and the
integrator test checks every captured event against it (no undeclared key).
"""

from __future__ import annotations

from typing import Final, get_args

from tomato_mqtt.wire.messages import JobEventKind

__all__ = ["EVENT_DETAILS", "events_markdown"]

#: event kind -> {detail key: meaning}; a key may be absent when it has no value
EVENT_DETAILS: Final[dict[str, dict[str, str]]] = {
    "queued": {},
    "matched": {},
    "launched": {"pipeline": "the pipeline the job runs on"},
    "task_started": {},
    "task_ended": {
        "reason": "done, stopped or error",
        "npoints": "points the component's runner took in the task (null: unknown, its node"
        " did not tell the task's end: restarted, lost, or a stop not confirmed)",
        "missed": "sampling deadlines skipped because the driver was behind (only if any)",
        "clock_step": "s the node's wall clock stepped by while the task ran: its points' "
        "uts jump there (only if it did)",
    },
    "cancel_requested": {"by": "the login that asked for the cancel (null: an open stack)"},
    "snapshot_written": {"path": "the snapshot file written (on the recorder's host)"},
    "file_written": {"path": "the results file written (on the recorder's host)"},
    "completed": {
        "reason": "why it ended ce or cd, or a note (null: nothing to say)",
        "by": "who cancelled it, when it ended cd by a cancel (null: an open stack)",
    },
    "warning": {
        "message": "what the user should know",
        "node": "the node it is about (clock skew warnings)",
        "withdrawn": "the message of an earlier warning that no longer holds (a task's end"
        " that came late, not the task)",
    },
    "storage_fault": {"error": "why the recorder cannot store data now"},
    "storage_resumed": {},
    "late_data_merged": {
        "path": "the results file the late points were merged into",
        "points": "role -> points now in the file",
        "note": "how the file was written, if not as asked (fallback folder)",
        "altered": "stored points or values the file could not hold as they came, and why"
        " (empty: none)",
    },
}

if set(EVENT_DETAILS) != set(get_args(JobEventKind)):  # a new kind must be declared here
    raise RuntimeError("EVENT_DETAILS and JobEventKind disagree")


def events_markdown() -> str:
    """The table of event kinds and their ``detail`` keys for docs/topics.md."""
    rows = ["| `event` | `detail` keys |", "|---|---|"]
    for kind, keys in EVENT_DETAILS.items():
        text = "; ".join(f"`{k}`: {v}" for k, v in keys.items()) or "—"
        rows.append(f"| `{kind}` | {text} |")
    return "\n".join(rows) + "\n"
