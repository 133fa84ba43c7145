"""The dashboard's HTTP side (aiohttp): the page, its WebSocket, sign-in and controls.

Routes: ``/`` the page; ``/static/*`` its own JS and CSS (in this package);
``/vendor/plotly.min.js`` from the installed ``plotly`` wheel (nothing third-party is
copied into the repository); ``/ws`` the live state; ``/api/login``, ``/api/logout``;
``/api/cmd`` (a control: the reply or the error goes back to the page as is; a
component is named as ``passata`` names it, see ``client/names.py``);
``/api/job/<id>/download`` (a snapshot of the job's NetCDF file, fetched from the
recorder over MQTT, so this works from any PC).

A control is sent only if the session's role lists it (the page hides the others), and
then the broker's ACL and the scheduler check it again for that login.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from tomato_mqtt.client.names import UnknownComponent, resolve
from tomato_mqtt.services.dashboard.files import chunks, take_snapshot
from tomato_mqtt.services.dashboard.service import (
    VIEWERS_MAX,
    VIEWERS_PER_ADDRESS,
    VIEWERS_SIGNED_IN,
    DashboardService,
    Viewer,
    stack_id,
)
from tomato_mqtt.services.dashboard.sessions import KNOWN_OPS, RECONNECTING, LoginFailed, Session
from tomato_mqtt.transport.client import AsyncClient, MqttError
from tomato_mqtt.transport.oneshot import refused_token
from tomato_mqtt.transport.rpc import NoResponder, ReplyError
from tomato_mqtt.wire.commands import JOB_ID_MAX, PAYLOAD_TEXT_MAX, json_chars
from tomato_mqtt.wire.messages import Reply

log = logging.getLogger(__name__)

__all__ = ["answers_to", "cookie_name", "make_app", "this_pc_names"]
STATIC = Path(__file__).with_name("static")
#: the largest request body: a payload of PAYLOAD_TEXT_MAX characters as JSON (escaped)
MAX_BODY = 8 * 2**20
#: the largest body of a request that carries no payload: a sign-in, a sign-out, a
#: control of a session that may not submit (each was read and parsed whole, up to
#: MAX_BODY, before anything was checked: 32 such 8 MiB bodies from a page nobody signed
#: in to took the dashboard from 115 to 525 MB, its pages 4-6 s: a security round)
SMALL_BODY = 64 * 2**10
SVC: web.AppKey[DashboardService] = web.AppKey("svc", DashboardService)

#: messages a second a page's live socket may send before it is closed (a page sends a
#: watch per click), and the close code it gets (1008: policy violation)
WS_MESSAGES_PER_S = 500
WS_TOO_MANY = 1008

SCHEDULER_TIMEOUT = 15.0
"""s a control's request waits for the scheduler (the page says it waits meanwhile)."""


def make_app(svc: DashboardService) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_same_origin])
    app[SVC] = svc
    app.on_response_prepare.append(_no_framing)
    _hide_keys_in_logs()
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/vendor/plotly.min.js", _plotly)
    app.router.add_get("/ws", _ws)
    app.router.add_post("/api/login", _login)
    app.router.add_post("/api/logout", _logout)
    app.router.add_post("/api/cmd", _cmd)
    app.router.add_get("/api/job/{job:\\d+}/download", _download)
    return app


def this_pc_names() -> set[str]:
    """This PC's own host names (short, as given, fully qualified), lower case; may ask
    the resolver (``getfqdn``), so called once, in a thread."""
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        name = name.lower().rstrip(".")
        if name:
            names |= {name, name.split(".", 1)[0]}
    return names


def answers_to(host: str, names: frozenset[str]) -> bool:
    """Whether the page answers to ``host`` (a Host header's name): one of ``names``, or
    an address. An address is what the browser was pointed at (the page's origin is that
    address); DNS rebinding needs a name of the attacker's, sent as Host."""
    host = host.lower().rstrip(".")
    if host in names:
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@web.middleware
async def _same_origin(request: web.Request, handler: Any) -> web.StreamResponse:
    # the page answers only to this PC's own names and addresses (and those of
    # [dashboard] hosts): a site whose name is re-pointed at this PC (DNS rebinding) sends
    # its own name as Host; its page read the whole state over the live socket of a
    # dashboard served on 0.0.0.0 and could try sign-ins (found by security reviews; on
    # loopback, an open stack's controls are anyone's)
    if not answers_to(request.url.host or "", request.app[SVC].names):
        raise web.HTTPForbidden(
            text=f"this dashboard does not answer to {request.host!r}: not a name of this PC"
            " (a site re-pointed at this PC by DNS rebinding sends its own name). To reach"
            " it under this name, add the name to hosts = [...] under [dashboard] in"
            " settings.toml and start the dashboard again"
        )
    # a page of another site must not drive a signed-in user's controls (CSRF), nor
    # open the live socket in the user's name; scripts send no Origin
    origin = request.headers.get("Origin")
    guarded = request.method == "POST" or request.path == "/ws"
    if guarded and origin and origin.split("://", 1)[-1] != request.host:
        raise web.HTTPForbidden(text="cross-origin request refused")
    resp: web.StreamResponse = await handler(request)
    return resp


async def _no_framing(request: web.Request, resp: web.StreamResponse) -> None:
    """No page may show the dashboard in a frame: a server on another port of this PC is
    the same site, so a frame of it had the user's cookie and key, and a click in it
    (clickjacking) acted as the user (a review: an eject went through)."""
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    if request.path.startswith("/api/") and "Cache-Control" not in resp.headers:
        # a sign-in's key, a control's answer and a job's results file are kept in no
        # cache (a shared browser kept a downloaded results file on its disk: a
        # security round)
        resp.headers["Cache-Control"] = "no-store"


class _NoKeys(logging.Filter):
    """What aiohttp logs of a request (its subprotocols when none fits, a header it could
    not parse) without a session's key: it wrote the key to the dashboard's log."""

    KEY = re.compile(r"\b(key\.|x-tomato-key['\"]?\s*[:,=]?\s*['\"]?)[^\s'\",\])]+", re.I)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = self.KEY.sub(r"\1<hidden>", text)
        if clean != text:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.KEY.sub(r"\1<hidden>", record.exc_text)
        return True


def _hide_keys_in_logs() -> None:
    for name in ("aiohttp.server", "aiohttp.websocket", "aiohttp.web", "aiohttp.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoKeys) for f in logger.filters):
            logger.addFilter(_NoKeys())


def cookie_name(port: int | None) -> str:
    """The session cookie of the dashboard serving on ``port``: a browser sends a host's
    cookies to every port, so two dashboards on one PC with one name signed each other's
    users out (found by a security audit)."""
    return f"tomato_dashboard_{port}"


#: the header that carries a session's key (sessions.py): the page's, not the browser's
KEY_HEADER = "X-Tomato-Key"
#: the live socket's subprotocol; a browser sets no header on a WebSocket, so the page
#: offers its key as a second one, ``key.<key>``, which is never chosen
WS_PROTOCOL = "tomato"


def _token(request: web.Request) -> str | None:
    return request.cookies.get(cookie_name(request.app[SVC].port))


def _key(request: web.Request) -> str | None:
    key = request.headers.get(KEY_HEADER)
    if key is None and request.path == "/ws":
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        key = next((p.strip()[4:] for p in offered.split(",") if p.strip()[:4] == "key."), None)
    return key


def _unkeyed(request: web.Request) -> str | None:
    """What to tell a request that brought a sign-in's cookie without its key (a script
    written for the cookie alone, the download link opened in a tab of its own)."""
    if not request.app[SVC].sessions.unkeyed(_token(request), _key(request)):
        return None
    return (
        f"not signed in: this request brought the cookie of a sign-in without its key (the"
        f" {KEY_HEADER} header: docs/dashboard.md); sign in again, or use the page"
    )


def _session(request: web.Request) -> Session:
    s = request.app[SVC].sessions.get(_token(request), _key(request))
    if s is None:
        raise web.HTTPServiceUnavailable(text="the dashboard is not connected to the broker yet")
    return s


async def _index(request: web.Request) -> web.StreamResponse:
    cfg = request.app[SVC].cfg  # which stack this is (tomato dashboard's probe of a port)
    stack = stack_id(cfg.instance, cfg.url.host, cfg.url.port)
    headers = {"Cache-Control": "no-cache", "X-Tomato-Stack": stack}
    return web.FileResponse(STATIC / "index.html", headers=headers)


async def _plotly(request: web.Request) -> web.StreamResponse:
    try:
        js = resources.files("plotly") / "package_data" / "plotly.min.js"
        path = Path(str(js))
    except ModuleNotFoundError:
        path = Path("-")
    if not path.is_file():
        raise web.HTTPNotFound(text="plotly is not installed: pip install 'tomato-mqtt[dashboard]'")
    return web.FileResponse(path, headers={"Cache-Control": "max-age=86400"})


async def _ws(request: web.Request) -> web.StreamResponse:
    svc = request.app[SVC]
    session = _session(request)
    signed_in = session is not svc.sessions.shared
    # the last places are kept for signed-in users: pages nobody signed in to (anyone who
    # reaches the page) could fill them all and lock everyone out (an outside check)
    anonymous = sum(v.session is svc.sessions.shared for v in svc.viewers)
    if len(svc.viewers) >= VIEWERS_MAX or (
        not signed_in and anonymous >= VIEWERS_MAX - VIEWERS_SIGNED_IN
    ):
        raise web.HTTPServiceUnavailable(
            text=f"{len(svc.viewers)} pages are open here: try later"
            + ("" if signed_in else ", or sign in")
        )
    peer = request.remote
    if sum(v.peer == peer for v in svc.viewers) >= VIEWERS_PER_ADDRESS:
        raise web.HTTPTooManyRequests(
            text=f"{VIEWERS_PER_ADDRESS} pages are open from {peer}: close one, then reload"
        )
    if request.headers.get("Upgrade", "").lower() != "websocket":
        # the page's look at why its socket closed (a plain GET): nothing refuses it here.
        # It got aiohttp's 400 "No WebSocket UPGRADE hdr", an error in every tab's
        # console at each sign-in (a dashboard tour)
        return web.Response(status=204)
    # a page sends only {"t": "watch", "job": N}: a few dozen bytes
    ws = web.WebSocketResponse(
        heartbeat=20, compress=False, max_msg_size=4096, protocols=(WS_PROTOCOL,)
    )
    try:
        await ws.prepare(request)
    except ConnectionResetError:  # the page went as it connected (a reload as the
        # dashboard came up): aiohttp logged it as an ERROR with its traceback (a tour)
        log.info("a page's socket closed as it connected: %s", peer)
        return ws
    viewer = Viewer(session, close=ws.close, peer=peer)
    viewer.send(svc.hello(viewer) | {"ended": svc.sessions.ended(_token(request))})
    svc.viewers.add(viewer)
    writer = asyncio.ensure_future(svc.writer(viewer, ws.send_str))
    window, count = 0.0, 0  # this second's messages (WS_MESSAGES_PER_S)
    try:
        async for msg in ws:
            now = asyncio.get_running_loop().time()
            window, count = (window, count + 1) if now - window < 1.0 else (now, 1)
            if count > WS_MESSAGES_PER_S:
                # a page sends a watch per click: 16 sockets sending as fast as they
                # could cost the dashboard half a core (a security round)
                log.info("closed a page's socket (%s): over %d messages a second", peer, count - 1)
                await ws.close(code=WS_TOO_MANY, message=b"too many messages")
                break
            if msg.type != WSMsgType.TEXT:
                continue
            # not a watch of ours (a list, a float too big for an id): ignored
            with contextlib.suppress(ValueError, TypeError, AttributeError, OverflowError):
                data = json.loads(msg.data)
                if data.get("t") == "watch":
                    job = data.get("job")
                    job = int(job) if job is not None else None
                    if job is None or 0 <= job <= JOB_ID_MAX:  # any other: no such job
                        svc.ask_watch(viewer, job)
    finally:
        svc.viewers.discard(viewer)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
    return ws


async def _json(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's body, a JSON object of at most ``limit`` bytes (a larger one is
    refused as it comes, not read whole first); parsed off the event loop when large."""
    if (request.content_length or 0) > limit:
        raise _too_large(request, limit)
    raw = bytearray()
    async for chunk in request.content.iter_chunked(SMALL_BODY):
        raw += chunk
        if len(raw) > limit:
            raise _too_large(request, limit)
    try:
        data = (
            json.loads(raw) if len(raw) <= SMALL_BODY else await asyncio.to_thread(json.loads, raw)
        )
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="the request body is not JSON") from None
    except RecursionError:  # [[[[...]]]] thousands deep: was a 500
        raise web.HTTPBadRequest(text="the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="the request body must be a JSON object")
    return data


def _too_large(request: web.Request, limit: int) -> web.HTTPRequestEntityTooLarge:
    """413, said for a person choosing a file where a payload may come."""
    text = f"the request body is larger than {limit:,} bytes"
    if limit == MAX_BODY:
        text += f"; a payload may have at most {PAYLOAD_TEXT_MAX:,} characters"
    refused = web.HTTPRequestEntityTooLarge(limit, request.content_length or 0, text=text)
    refused.force_close()  # the rest of the body is not read (aiohttp would for 10 s)
    return refused


async def _login(request: web.Request) -> web.StreamResponse:
    data = await _json(request, SMALL_BODY)
    user, password = str(data.get("username") or ""), str(data.get("password") or "")
    if not user:
        return web.json_response({"success": False, "msg": "give a user name"})
    svc = request.app[SVC]
    try:
        s = await svc.sessions.sign_in(user, password, peer=request.remote)
    except LoginFailed as e:
        return web.json_response({"success": False, "msg": str(e)})
    # the key goes to the page only (sessions.py); the cookie to the browser
    resp = web.json_response(
        {"success": True, "msg": f"signed in as {user}", "me": s.describe(), "key": s.key}
    )
    # over HTTPS the browser never sends the session's cookie over plain HTTP
    resp.set_cookie(
        cookie_name(svc.port), s.token, httponly=True, samesite="Strict", secure=svc.cfg.tls
    )
    return resp


async def _logout(request: web.Request) -> web.StreamResponse:
    unkeyed = _unkeyed(request)
    if unkeyed:  # the sign-in goes on: it was answered "signed out" (a review)
        return web.json_response({"success": False, "msg": unkeyed, "code": "not_allowed"})
    await request.app[SVC].sessions.sign_out(_token(request), _key(request))
    resp = web.json_response({"success": True, "msg": "signed out"})
    resp.del_cookie(cookie_name(request.app[SVC].port))
    return resp


def _reply(r: Reply) -> web.Response:
    return web.json_response({"success": r.success, "msg": r.msg, "code": r.code, "data": r.data})


def _own_client(request: web.Request, s: Session) -> AsyncClient | None:
    """The broker connection of the signed-in session ``s`` (None: the shared one)."""
    return None if s is request.app[SVC].sessions.shared else s.client


def _reconnecting(request: web.Request, s: Session) -> bool:
    """Whether the signed-in session ``s`` waits for its broker connection to be back (a
    login the broker no longer takes ends the sign-in instead: sessions.py)."""
    client = _own_client(request, s)
    return client is not None and not client.is_connected


def _fail(msg: str, code: str = "bad_request") -> web.Response:
    return web.json_response({"success": False, "msg": msg, "code": code, "data": None})


async def _cmd(request: web.Request) -> web.StreamResponse:
    """One control: ``{op, args}``; the answer is the scheduler's (or node's) reply."""
    s = _session(request)
    # a payload's room only for a session that may submit one
    data = await _json(request, MAX_BODY if "job_submit" in s.controls else SMALL_BODY)
    op, args = str(data.get("op") or ""), data.get("args") or {}
    if not isinstance(args, dict):
        return _fail("args must be an object")
    if op not in KNOWN_OPS:
        return _fail(
            f"unknown operation {op or '(no op)'!r} (known: {', '.join(KNOWN_OPS)})", "unknown_op"
        )
    if _reconnecting(request, s):
        return _fail(RECONNECTING, "unavailable")
    if op not in s.controls:
        unkeyed = _unkeyed(request)
        if unkeyed:
            return _fail(unkeyed, "not_allowed")
        ended = request.app[SVC].sessions.ended(_token(request))
        if ended:  # signed out elsewhere since the page loaded: say that, and who it is now
            # (it answered "not allowed here: … (role reader)" with the controls still
            # shown: a newcomer's tour with six sign-ins of one login)
            return web.json_response(
                {"success": False, "msg": ended, "code": "not_allowed", "data": None}
                | {"ended": True, "me": s.describe()}
            )
        if s.read_only:  # (it named the login's role, admin, on a read-only page: a tour)
            return _fail(f"not allowed here: {op} (this dashboard is read-only)", "not_allowed")
        if s is request.app[SVC].sessions.shared:  # nobody signed in: said so (it named
            # the dashboard's own login's role, reader: a hostile tour)
            return _fail(f"not signed in: sign in to use {op}", "not_allowed")
        role = s.describe()["role"] or "none"
        return _fail(f"not allowed here: {op} (role {role})", "not_allowed")
    connects = s.client.connects if s.client is not None else 0
    try:
        if op in ("get_attr", "set_attr"):
            want = str(args.pop("component", ""))
            if not want:
                return _fail("name the component")
            # named as passata names it (device/channel too), refused at once if unknown;
            # without a scheduler, among the metas this dashboard holds
            metas = [m.model_dump() for m in request.app[SVC].state.metas.values()]
            component = await resolve(s.requester, want, timeout=10, announced=metas)
            topic = s.topics.component_user_cmd(component, op)
            who = f"node hosting {component}"
            return _reply(await s.requester.request(topic, args, timeout=10, who=who))
        upload = None
        if op == "job_submit":
            upload = _upload_name(args)
            args = await asyncio.to_thread(_payload_args, args, s.user)  # a big upload
            args.setdefault("token", os.urandom(16).hex())  # sent again: still one job
        topic = s.topics.scheduler_cmd(op)
        t = SCHEDULER_TIMEOUT
        reply = await s.requester.request(topic, args, timeout=t, who="scheduler", resend=True)
        if not reply.success and refused_token(reply.code, reply.msg):
            args.pop("token", None)  # a scheduler older than the token: as before
            reply = await s.requester.request(topic, args, timeout=t, who="scheduler")
        head = "payload refused: "
        if upload and not reply.success and reply.msg.startswith(head):
            # the file's name, as ketchup and the page's own checks give it (dashboard.md)
            reply = reply.model_copy(update={"msg": f"{head}{upload}: {reply.msg[len(head) :]}"})
        return _reply(reply)
    except _BadUpload as e:
        return _fail(str(e), "refused")
    except UnknownComponent as e:
        return _fail(str(e), "not_found")
    except NoResponder as e:
        sessions = request.app[SVC].sessions
        if s is not sessions.shared and (ended := sessions.ended(_token(request))):
            # its sign-in ended while it waited (its login removed): said, not "no
            # scheduler answered … is it running?" 15 s later (a security tour)
            return web.json_response(
                {"success": False, "msg": ended, "code": "not_allowed", "data": None}
                | {"ended": True, "me": (sessions.shared or s).describe()}
            )
        if (client := _own_client(request, s)) is not None and (
            not client.is_connected or client.connects != connects
        ):
            return _fail(
                f"the connection to the broker was lost while the {op} waited (the broker "
                "restarted?): it may or may not have been carried out; look before sending "
                "it again",
                "unavailable",
            )
        changed = await _role_changed(request, s)
        if changed is not None:
            return changed
        return _fail(str(e), "unavailable")
    except (MqttError, ValueError) as e:
        return _fail(str(e), "unavailable")


async def _role_changed(request: web.Request, s: Session) -> web.StreamResponse | None:
    """A signed-in control nobody answered: if its login's role changed since the
    sign-in (the broker drops what the new role may not send), the sign-in ends, said
    (an operator lowered to reader waited 15 s for "no scheduler answered … is it
    running?": a hostile tour); None: not that."""
    said = await _ended_by_a_role_change(request, s)
    if said is None:
        return None
    sessions = request.app[SVC].sessions
    shared = sessions.shared or s
    return web.json_response(
        {"success": False, "msg": said, "code": "not_allowed"}
        | {"data": None, "ended": True, "me": shared.describe()}
    )


async def _ended_by_a_role_change(
    request: web.Request, s: Session, needs: str | None = None
) -> str | None:
    """If the role of a signed-in session's login changed since the sign-in (and the new
    one may not do ``needs``, when given), the sign-in ends: what to say; None when it
    did not (or the scheduler does not tell now)."""
    from tomato_mqtt.services.dashboard.sessions import controls_for, whoami

    sessions = request.app[SVC].sessions
    if s.client is None or s is sessions.shared or s.me is None:
        return None
    try:
        me = await whoami(s.requester, s.topics, 2.0)
    except Exception:  # (a throttled login's refusal, say: a 500 before the download's own
        # answer: a review) not known now: the request itself finds out
        return None
    if me is None or me.role == s.me.role:
        return None
    if needs is not None and needs in controls_for(me, False):
        return None  # still allowed (a role raised): the sign-in goes on, as for a control
    sessions.end(s, f"the role of {s.user!r} changed to {me.role or 'none'}")
    return sessions.ended(_token(request)) or "your sign-in has ended; sign in again"


class _BadUpload(ValueError):
    pass


def _upload_name(args: dict[str, Any]) -> str | None:
    """The uploaded file's name (``filename``), for the messages about it."""
    if "payload" in args or "payload_text" in args or not isinstance(args.get("text"), str):
        return None
    return Path(str(args.get("filename") or "payload.yml")).name[:200] or "payload.yml"


def _bounded(name: str, size: int) -> None:
    """A payload at most as long as the scheduler takes one as text: an upload parsed
    here went up to the 8 MiB of a request (found by a security audit: a 7.9 MB file and
    a payload with a 7 MB string were queued)."""
    if size > PAYLOAD_TEXT_MAX:
        raise _BadUpload(
            f"payload refused: {name}: {size:,} characters, more than a payload may have"
            f" ({PAYLOAD_TEXT_MAX:,})"
        )


def _payload_args(args: dict[str, Any], user: str | None) -> dict[str, Any]:
    """An uploaded payload file, read as ``ketchup submit`` reads one (YAML or JSON),
    except that it may not name other files (the server's own: found by a security
    review, an upload's ``samplefile`` read a root-only file into a job)."""
    from tomato_mqtt.config.payloads import PayloadError, read_payload_text

    if "payload" in args or "payload_text" in args:  # the scheduler's own arguments
        # (topics.md): passed on as they are, the scheduler reads and checks them (a
        # payload_text may not name other files there either)
        if isinstance(args.get("payload_text"), str):
            _bounded("payload_text", len(args["payload_text"]))
        if "payload" in args:  # as the scheduler gets it: JSON
            _bounded("payload", json_chars(args["payload"]))
        given: dict[str, Any] = {
            k: args[k] for k in ("payload", "payload_text", "jobname", "token") if k in args
        }
        return {**given, "user": user} if user else given
    text = args.get("text")
    name = Path(str(args.get("filename") or "payload.yml")).name[:200] or "payload.yml"
    if not isinstance(text, str):
        raise _BadUpload(
            "choose a payload file (or give args.payload, args.payload_text or args.text)"
        )
    _bounded(name, len(text))
    if not text.strip():  # a file was chosen: say what is wrong with it, as ketchup does
        raise _BadUpload(f"payload refused: {name}: the file is empty")
    try:
        doc = read_payload_text(text, name)
    except PayloadError as e:
        where = f"{e.location}: " if e.location else ""
        raise _BadUpload(f"payload refused: {name}: {where}{e.reason}") from None
    out: dict[str, Any] = {"payload": json.loads(json.dumps(doc, default=str))}
    if args.get("jobname"):
        out["jobname"] = str(args["jobname"])
    if user:
        out["user"] = user
    return out


async def _download(request: web.Request) -> web.StreamResponse:
    """A snapshot of the job's file: written by the recorder now, fetched chunk by chunk."""
    s = _session(request)
    job = int(request.match_info["job"])
    if not 0 < job <= JOB_ID_MAX:  # (a 500 and a traceback in the log: a security tour)
        raise web.HTTPBadRequest(text=f"no job {job}: a job id is a whole number 1..{JOB_ID_MAX}")
    if "job_snapshot" not in s.controls:
        if s.read_only:  # the reason, not the role (an admin was told its role may not)
            raise web.HTTPForbidden(text="this dashboard is read-only: no snapshots here")
        ended = _unkeyed(request) or request.app[SVC].sessions.ended(_token(request))
        raise web.HTTPForbidden(text=ended or "your role may not take snapshots of jobs")
    if _reconnecting(request, s):  # (it waited 60 s for "no scheduler answered")
        raise web.HTTPServiceUnavailable(text=RECONNECTING)
    # a role lowered since the sign-in: the broker drops the request unread, and the
    # download waited 60 s for "no scheduler answered … is it running?" (a hostile tour)
    if (said := await _ended_by_a_role_change(request, s, "job_snapshot")) is not None:
        raise web.HTTPForbidden(text=said)
    try:
        snap = await take_snapshot(s, job)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/x-netcdf",
                "Content-Disposition": f'attachment; filename="snapshot.{job}.nc"',
            }
        )
        await resp.prepare(request)
        async for data in chunks(s, snap):
            await resp.write(data)
        await resp.write_eof()
        return resp
    except ReplyError as e:
        if e.code == "not_allowed":  # another user's job: forbidden, as for a reader
            raise web.HTTPForbidden(text=str(e)) from None
        if e.code == "not_found":
            raise web.HTTPNotFound(text=str(e)) from None
        if e.code == "unavailable":  # the recorder could not give it now
            raise web.HTTPServiceUnavailable(text=str(e)) from None
        raise web.HTTPConflict(text=str(e)) from None
    except (NoResponder, MqttError) as e:
        raise web.HTTPServiceUnavailable(text=str(e)) from None
