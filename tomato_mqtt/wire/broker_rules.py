"""Every login's rules as one JSON document, for a broker that is not Mosquitto.

``tomato broker-config --rules FILE`` writes it from the users file and the devices file:
the same rules the embedded broker's ACL plugin enforces and the Mosquitto ``acl_file``
carries (:func:`tomato_mqtt.wire.acl.rules`), the login's own reply topics written out
(no ``%u``), and each login's Mosquitto password hash (``$7$``: PBKDF2-SHA512, which
any runtime can check). A broker's own authentication and authorisation hooks read it
(Aedes's, in ``tests/aedes/rules.mjs``; EMQX's or HiveMQ's would read it the same way).

The document (``schema`` below)::

    {"schema": "tomato-mqtt/broker-rules/1", "instance": "lab1",
     "logins": [{"login": "olga", "role": "operator", "password_hash": "$7$...",
                 "publish": ["tomato/v2/lab1/scheduler/cmd/job_submit/olga", ...],
                 "subscribe": ["tomato/v2/lab1/job/+/status", ...]}, ...]}

What a broker must do with it (the embedded broker's rule; docs/security.md):

- a login not listed, or whose password does not match its hash, is refused;
- a PUBLISH is allowed when its topic matches one of the login's ``publish`` filters;
- a SUBSCRIBE is allowed when every topic its filter can match is matched by one of the
  login's ``subscribe`` filters (``+`` in the request needs ``+`` or ``#`` there, ``#``
  needs ``#``), and a message is delivered only on a topic one of them matches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tomato_mqtt.config.users import UsersFile
from tomato_mqtt.wire.acl import granted_logins
from tomato_mqtt.wire.topics import Topics

__all__ = ["SCHEMA", "rules_document"]

SCHEMA = "tomato-mqtt/broker-rules/1"


def rules_document(
    users: UsersFile, topics: Topics, node_components: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """The document of the module docstring: every login with a role and a password hash
    (a login without either may do nothing, as in the Mosquitto files)."""
    logins = []
    for u, granted in granted_logins(users, topics, node_components):
        logins.append(
            {
                "login": u.name,
                "role": u.role,
                "password_hash": u.mosquitto_hash,
                "publish": [r.pattern for r in granted if r.access == "publish"],
                "subscribe": [r.pattern for r in granted if r.access == "subscribe"],
            }
        )
    return {"schema": SCHEMA, "instance": topics.instance, "logins": logins}
