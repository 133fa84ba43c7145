"""The entry points of ``tomato``, ``ketchup`` and ``passata``: the commands that send one
request run here without typer; everything else goes to the typer apps.

Importing typer (and click) is ~45 ms, a third of a ``tomato status`` call; issue 15 asks
for a call within 3 times a bare interpreter start. So the console scripts land here:
when the command line is one of :data:`FAST` with only the common options in their plain
spellings (``-p 1883``, ``--port=1883``, ``-y``…), it runs on the typer-free core of the
same command (:mod:`.core`, :mod:`.status_text`, :mod:`.passata_core`), which prints
exactly what the typer command prints. Anything else — ``--help``, an unknown or
misspelt option, a bad value, a missing argument — goes to typer, which owns the
messages, the help and the exit codes.
"""

from __future__ import annotations

import os
import sys

from tomato_mqtt.cli import core
from tomato_mqtt.record import Record

# no typing, dataclasses or pathlib at run time: a call here should take about three
# interpreter starts (issue 15), and those three were ~10 ms of it
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    #: how a fast command runs: (the common options, its positionals, its own options)
    Run = Callable[[core.Opts, list[str], dict[str, str]], None]
    Build = Callable[[list[str], dict[str, str]], dict[str, object]]

__all__ = ["FAST", "ketchup", "parse", "passata", "read_line", "tomato"]

#: the common options of a command that asks a service (common.CLIENT): spelling -> name
_VALUED = {
    "-p": "port",
    "--port": "port",
    "-b": "broker",
    "--broker": "broker",
    "--instance": "instance",
    "-A": "appdir",
    "--appdir": "appdir",
    "-t": "timeout",
    "--timeout": "timeout",
    "-D": "datadir",
    "--datadir": "datadir",
    "-L": "logdir",
    "--logdir": "logdir",
}
_FLAGS = {"-y": "yaml", "--yaml": "yaml", "--json": "json"}


FORCE = {"--force": "force", "-f": "force"}
#: ``tomato broker|scheduler|recorder|node``: run by cli/serve.py (as serve.SERVICES)
_SERVICES = ("broker", "scheduler", "recorder", "node")


def _any_args(_args: list[str]) -> bool:
    return True


def _any_own(_args: list[str], _own: dict[str, str]) -> bool:
    return True


class Fast(Record):
    """A command the fast path runs: how many positionals, which flags of its own."""

    __slots__ = (
        "check",
        "check_own",
        "common",
        "flags",
        "max_args",
        "min_args",
        "run",
        "timeout",
        "values",
    )
    run: Run
    min_args: int
    max_args: int | None
    #: its own options: spelling -> name; a flag's value is "" (``--force``), another
    #: option's its argument (``-j NAME``)
    flags: Mapping[str, str]
    values: Mapping[str, str]
    timeout: float  # the command's default ``-t`` (common.options(timeout=…))
    check: Callable[[list[str]], bool]  # are the positionals valid?
    #: are the positionals and its own options valid (as typer would check them)?
    check_own: Callable[[list[str], dict[str, str]], bool]
    #: the common options it takes (common.options(names)); others go to typer
    common: frozenset[str]

    def __init__(
        self,
        run: Run,
        min_args: int,
        max_args: int | None,
        flags: Mapping[str, str] | None = None,
        values: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        check: Callable[[list[str]], bool] = _any_args,
        check_own: Callable[[list[str], dict[str, str]], bool] = _any_own,
        common: frozenset[str] = frozenset(core.CLIENT),
    ) -> None:
        flags, values = flags or {}, values or {}
        self._init(locals())


def _tomato_status(opts: core.Opts, args: list[str], _own: dict[str, str]) -> None:
    from tomato_mqtt.cli import status_text

    status_text.show(opts, args[0].lower() if args else "scheduler")


def _status_section_ok(args: list[str]) -> bool:
    from tomato_mqtt.cli.status_text import HUMAN

    return not args or args[0].lower() in {*HUMAN, "tomato"}  # "tomato": tomato's name


def _passata(op: str, human: str, build: Build) -> Run:
    def run(opts: core.Opts, args: list[str], own: dict[str, str]) -> None:
        from tomato_mqtt.cli import passata_core

        fn = getattr(passata_core, human)
        passata_core.run_cmd(args[0], op, build(args, own), fn, opts)

    return run


def _passata_meta(what: str, human: str) -> Run:
    def run(opts: core.Opts, args: list[str], _own: dict[str, str]) -> None:
        from tomato_mqtt.cli import passata_core

        pick = (
            passata_core.constants(args[1:]) if what == "constants" else passata_core.capabilities
        )
        passata_core.run_meta(args[0], what, pick, getattr(passata_core, human), opts)

    return run


def _ketchup_submit(opts: core.Opts, args: list[str], own: dict[str, str]) -> None:
    from tomato_mqtt.cli import ketchup_core

    ketchup_core.submit(opts, args[0], own.get("jobname"))


def _ketchup_cancel(opts: core.Opts, args: list[str], _own: dict[str, str]) -> None:
    from tomato_mqtt.cli import ketchup_core

    ketchup_core.cancel(opts, [int(a) for a in args])


def _ketchup_status(opts: core.Opts, args: list[str], own: dict[str, str]) -> None:
    from tomato_mqtt.cli import ketchup_core

    limit, offset = own.get("limit"), own.get("offset")
    ketchup_core.status(
        opts,
        [int(a) for a in args],
        all_="all" in own,
        summary="summary" in own,
        limit=int(limit) if limit is not None else None,
        offset=int(offset) if offset is not None else None,
    )


def _ketchup_status_ok(args: list[str], own: dict[str, str]) -> bool:
    """Job ids, and --limit / --offset in typer's ranges (else typer says what is wrong)."""
    from tomato_mqtt.cli.ketchup_core import PAGE_MAX

    try:
        limit = int(own.get("limit", "1"))
        offset = int(own.get("offset", "0"))
    except ValueError:
        return False
    return _ints(args) and 1 <= limit <= PAGE_MAX and offset >= 0


def _ketchup_search(opts: core.Opts, args: list[str], _own: dict[str, str]) -> None:
    from tomato_mqtt.cli import ketchup_core

    ketchup_core.search(opts, args[0])


def _tomato_start(opts: core.Opts, _args: list[str], own: dict[str, str]) -> None:
    from tomato_mqtt.cli import start_core

    start_core.start(opts, opts.verbose, opts.quiet)


#: tomato's -v/-vv and -q/-qq, common options (click counts a cluster's letters: -vvv,
#: -vq go to typer)
_LOUDNESS = {
    "-v": ("verbose", 1),
    "--verbose": ("verbose", 1),
    "-vv": ("verbose", 2),
    "-q": ("quiet", 1),
    "--quiet": ("quiet", 1),
    "-qq": ("quiet", 2),
}


def _ints(args: list[str]) -> bool:
    try:
        [int(a) for a in args]
    except ValueError:
        return False
    return True


def _scheduler(op: str, *names: str) -> Run:
    """A scheduler command that takes its positionals as ``names`` and prints the message."""

    def run(opts: core.Opts, args: list[str], _own: dict[str, str]) -> None:
        core.ask_scheduler(opts, op, dict(zip(names, args, strict=True)))

    return run


FAST: dict[tuple[str, str], Fast] = {
    ("tomato", "start"): Fast(
        _tomato_start,
        0,
        0,
        timeout=core.START_TIMEOUT,
        common=frozenset(core.START),
    ),
    ("tomato", "status"): Fast(_tomato_status, 0, 1, check=_status_section_ok),
    ("tomato", "reload"): Fast(_scheduler("reload"), 0, 0, timeout=10.0),
    ("tomato", "pipeline load"): Fast(_scheduler("pipeline_load", "pipeline", "sampleid"), 2, 2),
    ("tomato", "pipeline eject"): Fast(_scheduler("pipeline_eject", "pipeline"), 1, 1),
    ("tomato", "pipeline ready"): Fast(_scheduler("pipeline_ready", "pipeline"), 1, 1),
    ("ketchup", "submit"): Fast(
        _ketchup_submit, 1, 1, values={"--jobname": "jobname", "-j": "jobname"}
    ),
    ("ketchup", "status"): Fast(
        _ketchup_status,
        0,
        None,
        flags={"--all": "all", "-a": "all", "--summary": "summary"},
        values={"--limit": "limit", "--offset": "offset"},
        check_own=_ketchup_status_ok,
    ),
    ("ketchup", "search"): Fast(
        _ketchup_search, 1, 1, flags={"--complete": "complete", "-c": "complete"}
    ),
    ("ketchup", "cancel"): Fast(_ketchup_cancel, 1, None, check=_ints),
    ("passata", "status"): Fast(_passata("status", "status_human", lambda a, f: {}), 1, 1),
    ("passata", "capabilities"): Fast(_passata_meta("capabilities", "list_human"), 1, 1),
    ("passata", "constants"): Fast(_passata_meta("constants", "constants_human"), 1, None),
    ("passata", "measure"): Fast(_passata("measure", "point_human", lambda a, f: {}), 1, 1),
    ("passata", "get"): Fast(
        _passata("get_attr", "dict_human", lambda a, f: {"attrs": a[1:]}), 2, None
    ),
    ("passata", "set"): Fast(
        _passata(
            "set_attr",
            "message",
            lambda a, o: {"attr": a[1], "val": a[2], "force": "force" in o},
        ),
        3,
        3,
        flags=FORCE,
    ),
    ("passata", "reset"): Fast(
        _passata("reset", "message", lambda a, o: {"force": "force" in o}),
        1,
        1,
        flags=FORCE,
        timeout=10.0,
    ),
    ("passata", "register"): Fast(
        _passata("register", "message", lambda a, f: {}), 1, 1, timeout=10.0
    ),
}


def parse(prog: str, argv: Sequence[str]) -> Callable[[], None] | None:
    """The call ``argv`` asks for, if the fast path can run it exactly as typer would."""
    line = read_line(prog, argv)
    if line is None:
        return None
    spec, opts, args, own = line

    def call() -> None:
        core.loudness(opts)
        spec.run(opts, args, own)

    return call


def read_line(
    prog: str, argv: Sequence[str]
) -> tuple[Fast, core.Opts, list[str], dict[str, str]] | None:
    """``argv`` read as typer would: the command, its common options, positionals and its
    own options; None where typer must read it."""
    lead = 0  # -v/-q before the command, as tomato 2.2 takes them (`tomato -v status`)
    while lead < len(argv) and argv[lead] in _LOUDNESS:
        lead += 1
    loudness, argv = list(argv[:lead]), argv[lead:]
    if not argv:
        return None
    if (prog, argv[0]) in FAST:
        spec, rest = FAST[(prog, argv[0])], [*loudness, *argv[1:]]
    elif len(argv) > 1 and (prog, f"{argv[0]} {argv[1]}") in FAST:  # a sub-app's command
        spec, rest = FAST[(prog, f"{argv[0]} {argv[1]}")], [*loudness, *argv[2:]]
    else:
        return None
    given: dict[str, str] = {}
    own: dict[str, str] = {}
    loud: dict[str, int] = {}
    flags: set[str] = set()
    args: list[str] = []
    while rest:
        a = rest.pop(0)
        if a.startswith("--") and "=" in a:
            name, value = a.split("=", 1)
            if name in spec.values:
                own[spec.values[name]] = value
            elif _VALUED.get(name) in spec.common:
                given[_VALUED[name]] = value
            else:
                return None
        elif a in spec.values or _VALUED.get(a) in spec.common:
            if not rest:
                return None
            if a in spec.values:
                own[spec.values[a]] = rest.pop(0)
            else:
                given[_VALUED[a]] = rest.pop(0)
        elif _FLAGS.get(a) in spec.common:
            flags.add(_FLAGS[a])
        elif a in spec.flags:
            own[spec.flags[a]] = ""
        elif a in _LOUDNESS and _LOUDNESS[a][0] in spec.common:
            name, n = _LOUDNESS[a]
            loud[name] = loud.get(name, 0) + n
        elif a.startswith("-") and a != "-":
            return None  # --help, -p1883, a misspelt option: typer says what is wrong
        else:
            args.append(a)
    if len(args) < spec.min_args or (spec.max_args is not None and len(args) > spec.max_args):
        return None
    if not spec.check(args) or not spec.check_own(args, own):
        return None
    opts = _opts(given, flags, spec.timeout, "broker" in spec.common, loud)
    if opts is None:
        return None
    return spec, opts, args, own


def _opts(
    given: dict[str, str],
    flags: set[str],
    default_timeout: float,
    takes_broker: bool,
    loud: dict[str, int],
) -> core.Opts | None:
    from tomato_mqtt.cli.timeout import seconds

    broker = given.get("broker")
    if broker is None and takes_broker and "TOMATO_BROKER" in os.environ:
        broker = os.environ["TOMATO_BROKER"]
        if not broker:
            return None  # click's reading of an empty variable: leave it to typer
    try:
        port = int(given["port"]) if "port" in given else None
        timeout = seconds(given["timeout"]) if "timeout" in given else default_timeout
    except ValueError:
        return None
    if port is not None and not 1 <= port <= 65535:
        return None  # typer says what is wrong with it
    opts = core.Opts(
        port=port,
        broker=broker,
        instance=given.get("instance"),
        appdir=given.get("appdir"),
        datadir=given.get("datadir"),
        logdir=given.get("logdir"),
        timeout=timeout,
        yaml="yaml" in flags,
        json="json" in flags,
        verbose=loud.get("verbose", 0),
        quiet=loud.get("quiet", 0),
    )
    core._REPLY_FORMAT[0] = "json" if opts.json else "yaml" if opts.yaml else None
    return opts


def _standard_fds() -> None:
    """A command started with stdin, stdout or stderr closed (`tomato start 1>&-`, a
    service manager or a cron daemon that closes them) gets /dev/null there. Otherwise
    Python's ``sys.stdout`` is None (`tomato start` failed on it, the stack half
    started) and the first socket or file the command opens takes that number: the MQTT
    listener `tomato start` binds, as fd 0, was replaced by the broker's stdin (found
    by an outside review)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    for name in ("stdin", "stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "r" if name == "stdin" else "w"))  # noqa: SIM115


def _main(prog: str) -> None:
    _standard_fds()
    if prog == "tomato" and sys.argv[1:2] and sys.argv[1] in _SERVICES:
        from tomato_mqtt.cli import serve  # a service: its own typer-free entry

        serve.main(sys.argv[1:])
        return
    call = parse(prog, sys.argv[1:])
    if call is None:
        import importlib

        try:
            importlib.import_module(f"tomato_mqtt.cli.{prog}").main()
        except KeyboardInterrupt:
            # Ctrl-C while typer and the command were still being imported (the first
            # ~0.1 s): a traceback, killed by SIGINT (a newcomer's tour); said as below
            pass
        except SystemExit as e:
            if e.code != 130:  # typer's Exit(130) on Ctrl-C, and the commands' own
                raise
        else:
            return
        # as below: `tomato stop`, `ketchup snapshot` ended 130 without a word, and
        # `--follow` interrupted while it connected printed tracebacks of its client
        # torn down with the loop it ran on at the interpreter's teardown (a tour)
        said = f"interrupted: {core.interrupted_note}" if core.interrupted_note else "interrupted"
        for stream, last in ((sys.stdout, ""), (sys.stderr, said + "\n")):
            try:  # what it printed before, then the line (os._exit flushes nothing)
                stream.write(last)
                stream.flush()
            except Exception:
                pass
        os._exit(130)
    try:
        call()
    except BrokenPipeError:  # `tomato status | head -1`: as click, quietly
        sys.stderr.close()
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C while it waits: a line, not a traceback
        print("interrupted", file=sys.stderr)
        core.exit_now(130)
    except SystemExit as e:  # fail(): its message is printed
        if e.code is None or isinstance(e.code, int):
            core.exit_now(e.code or 0)
        raise
    # printed and done: without the interpreter's teardown (~3 ms of a ~25 ms call)
    core.exit_now(0)


def tomato() -> None:
    _main("tomato")


def ketchup() -> None:
    _main("ketchup")


def passata() -> None:
    _main("passata")
