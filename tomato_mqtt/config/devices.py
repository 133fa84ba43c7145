"""The devices file: devices, pipelines, roles; expanded into components and pipelines.

tomato's format (YAML or JSON), plus an optional ``node:`` per device. Every channel of
a device is a component, named as in tomato: ``driver:(address,channel)``. A pipeline
named ``name-*`` with one entry on ``channel: each`` becomes one pipeline per channel of
that device (``name-1``, ``name-2``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from tomato_mqtt.documents import DocumentError, kind_of, parse_document
from tomato_mqtt.errors import ConfigError, format_location

__all__ = [
    "EACH",
    "ComponentConfig",
    "DeviceConfig",
    "DevicesFile",
    "Layout",
    "LayoutDiff",
    "PipelineConfig",
    "PipelineEntry",
    "PipelineLayout",
    "build_layout",
    "component_name",
    "load_devices",
    "parse_devices",
]

EACH = "each"
WILDCARD = "*"


def _number_to_str(v: Any) -> Any:
    # YAML reads `channels: [1, 2]` and `channel: 1` as ints; tomato's names are strings
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return v


Label = Annotated[str, BeforeValidator(_number_to_str), Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceConfig(_Model):
    name: Label
    driver: Label
    address: Label
    channels: list[Label] = Field(min_length=1)
    pollrate: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    node: Label | None = None

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for ch in v:
            if ch in seen:
                raise ValueError(f"channel {ch!r} is listed twice")
            if ch == EACH:
                raise ValueError(f"{EACH!r} is reserved for wildcard pipelines")
            seen.add(ch)
        return v


class PipelineEntry(_Model):
    role: Label
    device: Label
    channel: Label

    @field_validator("role")
    @classmethod
    def _role_names_a_group(cls, v: str) -> str:
        # the role names the component's group in the results file: NetCDF reads a '/'
        # as a path, so 'a/b' became the nested groups /a/b that readers (and tomato's
        # own) do not find; tomato 2.2 refuses it at start too
        if "/" in v:
            raise ValueError(
                f"{v!r} cannot contain '/': the role names the component's group in the "
                f"results file, where '/' would nest groups (use e.g. {v.replace('/', '-')!r})"
            )
        return v


class PipelineConfig(_Model):
    name: Label
    devices: list[PipelineEntry] = Field(min_length=1)


class DevicesFile(_Model):
    devices: list[DeviceConfig] = Field(default_factory=list)
    pipelines: list[PipelineConfig] = Field(default_factory=list)


class ComponentConfig(_Model):
    name: str
    device: str
    driver: str
    address: str
    channel: str
    node: str
    pollrate: float


class PipelineLayout(_Model):
    name: str
    roles: dict[str, str]
    """role -> component name"""


class LayoutDiff(_Model):
    """What changes from one layout to the next (names, sorted)."""

    added_components: list[str] = Field(default_factory=list)
    removed_components: list[str] = Field(default_factory=list)
    changed_components: list[str] = Field(default_factory=list)
    added_pipelines: list[str] = Field(default_factory=list)
    removed_pipelines: list[str] = Field(default_factory=list)
    changed_pipelines: list[str] = Field(default_factory=list)
    added_drivers: list[str] = Field(default_factory=list)
    removed_drivers: list[str] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f) for f in type(self).model_fields)


class Layout(_Model):
    components: dict[str, ComponentConfig] = Field(default_factory=dict)
    pipelines: dict[str, PipelineLayout] = Field(default_factory=dict)
    #: every device of the file, also one no pipeline uses (it has no components, but
    #: `tomato status devices` lists it, as tomato does), with the node it is on
    devices: dict[str, DeviceConfig] = Field(default_factory=dict)
    #: keys of the file that nothing reads, one line each (file, entry, key): ignored,
    #: as tomato 2.2 ignores them, but said at `tomato start` and `tomato reload`
    ignored: list[str] = Field(default_factory=list)

    @property
    def drivers(self) -> set[str]:
        return {c.driver for c in self.components.values()}

    @property
    def nodes(self) -> set[str]:
        return {c.node for c in self.components.values()}

    def components_of_node(self, node: str) -> list[ComponentConfig]:
        return sorted((c for c in self.components.values() if c.node == node), key=_by_name)

    def pipelines_of_component(self, component: str) -> list[str]:
        return [p.name for p in self.pipelines.values() if component in p.roles.values()]

    def diff(self, other: Layout) -> LayoutDiff:
        """Changes from this layout (the running one) to ``other`` (the new one)."""
        return LayoutDiff(
            **_diff_maps("components", self.components, other.components),
            **_diff_maps("pipelines", self.pipelines, other.pipelines),
            added_drivers=sorted(other.drivers - self.drivers),
            removed_drivers=sorted(self.drivers - other.drivers),
        )


def _by_name(c: ComponentConfig) -> str:
    return c.name


def natural_key(name: str) -> list[tuple[int, int, str]]:
    """A name's sort key with its numbers as numbers: pip-2 before pip-10 (an
    integrator's tour: a reload's 24 pipelines read pip-1, pip-10 … pip-19, pip-2)."""
    parts = []
    for i, part in enumerate(_DIGITS.split(name)):  # (odd places: the numbers)
        parts.append((0, int(part), "") if i % 2 else (1, 0, part))
    parts.append((2, 0, name))  # pip-01 and pip-1: in one order, whatever the set's
    return parts


_DIGITS = re.compile(r"(\d+)")


def _diff_maps(kind: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    return {
        f"added_{kind}": sorted(new.keys() - old.keys(), key=natural_key),
        f"removed_{kind}": sorted(old.keys() - new.keys(), key=natural_key),
        f"changed_{kind}": sorted(
            (k for k in old.keys() & new.keys() if old[k] != new[k]), key=natural_key
        ),
    }


def component_name(driver: str, address: str, channel: str) -> str:
    """tomato's component name, kept whole in payloads and files (topics use a slug)."""
    return f"{driver}:({address},{channel})"


def load_devices(path: Path, default_node: str = "local") -> Layout:
    """Read, check and expand a devices file (YAML, or JSON by its suffix)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path, None, "file not found (`tomato init` writes a default one)"
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot be read: {e.strerror or e}") from None
    try:
        data = parse_document(text, json_only=path.suffix.lower() == ".json")
    except DocumentError as e:
        raise ConfigError(path, e.location, e.reason) from None
    return parse_devices(data, path, default_node)


def parse_devices(data: Any, file: str | Path = "<devices>", default_node: str = "local") -> Layout:
    """Check and expand an already parsed devices document."""
    if data is None:
        raise ConfigError(file, None, "the file is empty: it needs 'devices' and 'pipelines'")
    if not isinstance(data, dict):
        raise ConfigError(
            file, None, f"expected a mapping with 'devices' and 'pipelines', not {kind_of(data)}"
        )
    if "devices" not in data and "pipelines" not in data:  # (as an empty file)
        has = ", ".join(repr(str(k)) for k in data) or "nothing"
        raise ConfigError(file, None, f"it needs 'devices' and 'pipelines' (it has {has})")
    known, unknown = _known_keys(data)
    for where, key, kind in unknown:
        if kind == "the file" and (near := _nearest(key, kind, cutoff=0.8)) not in (None, *data):
            # a misspelt top-level key: ignored, it removed every pipeline (or device) of
            # the lab at a reload, said only in a warning after "reload done" (an outside
            # fault run); tomato 2.2 fails on such a file too
            raise ConfigError(
                file,
                None,
                f"unknown key {key!r}: did you mean {near!r}? (the file has no {near!r}: "
                f"were it ignored, there would be no {near})",
            )
        near = _nearest(key, kind, cutoff=0.85)  # nod, noed, nodes; not mode, note, code
        if near in _OURS:  # not tomato 2.2's: nothing to keep compatible by ignoring it
            raise ConfigError(
                file,
                where or None,
                f"unknown key {key!r}: did you mean {near!r}? (were it ignored, the device would "
                "run on the default node, not on the PC it names)",
            )
    ignored = [f"{file}: {_unknown_key(where, key, kind)}" for where, key, kind in unknown]
    # one of the two keys gone: said (a file cut in half started the stack with no
    # pipeline at all, without a word: a fault-injection run)
    ignored += [
        f"{file}: it has no {key!r}: {what} (a file cut short?)"
        for key, what in (
            ("devices", "no device is configured"),
            ("pipelines", "no pipeline is configured, so no job can run"),
        )
        if key not in data
    ]
    try:
        doc = DevicesFile.model_validate(known)
    except ValidationError as e:
        err = ConfigError.from_validation_error(file, e, data)
        if unknown:  # a misspelt key is likely why a field is missing: show both
            keys = "; ".join(f"{where or 'top level'}: {key!r}" for where, key, _ in unknown)
            err = ConfigError(err.file, err.location, f"{err.reason} (unknown keys: {keys})")
        raise err from None
    layout = build_layout(doc, default_node, file)
    layout.ignored = ignored
    return layout


#: what each kind of entry of a devices file holds (the models' fields)
_ENTRIES: dict[str, type[_Model]] = {
    "the file": DevicesFile,
    "a device": DeviceConfig,
    "a pipeline": PipelineConfig,
    "a pipeline's entry": PipelineEntry,
}


def _known_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """``data`` without the keys no model has, and those keys as (where, key, kind).

    tomato 2.2 ignores keys it does not know (``comment:`` on a device, a pipeline or the
    file), so its files are accepted here too; but silently dropping them would hide a
    typo (``pollrat: 5`` leaving the default pollrate), so each is named to the user.
    """
    unknown: list[tuple[str, str, str]] = []

    def keep(entry: Any, kind: str, loc: tuple[int | str, ...]) -> Any:
        if not isinstance(entry, dict):
            return entry  # not a mapping: the model says what is wrong with it
        fields = _ENTRIES[kind].model_fields
        for key in entry:
            if key not in fields:
                unknown.append((format_location(loc, data), str(key), kind))
        return {k: v for k, v in entry.items() if k in fields}

    def each(items: Any, kind: str, loc: tuple[int | str, ...]) -> Any:
        if not isinstance(items, list):
            return items
        return [keep(item, kind, (*loc, i)) for i, item in enumerate(items)]

    out = keep(data, "the file", ())
    if "devices" in out:
        out["devices"] = each(out["devices"], "a device", ("devices",))
    if "pipelines" in out:
        out["pipelines"] = each(out["pipelines"], "a pipeline", ("pipelines",))
        for i, pip in enumerate(out["pipelines"] if isinstance(out["pipelines"], list) else []):
            if isinstance(pip, dict) and "devices" in pip:
                loc = ("pipelines", i, "devices")
                pip["devices"] = each(pip["devices"], "a pipeline's entry", loc)
    return out, unknown


#: keys of ours, not tomato 2.2's: a misspelling of one is refused, not ignored (an
#: admin's tour: `nod: pc2` moved an instrument to the scheduler PC's node, with a warning)
_OURS = frozenset({"node"})


def _nearest(key: str, kind: str, cutoff: float = 0.6) -> str | None:
    import difflib

    near = difflib.get_close_matches(key, list(_ENTRIES[kind].model_fields), n=1, cutoff=cutoff)
    return near[0] if near else None


def _unknown_key(where: str, key: str, kind: str) -> str:
    fields = list(_ENTRIES[kind].model_fields)
    near = _nearest(key, kind)
    hint = f"did you mean {near!r}? " if near else ""
    return (
        f"{where or 'top level'}: unknown key {key!r} ignored, as tomato 2.2 ignores it "
        f"({hint}{kind} has: {', '.join(fields)})"
    )


def build_layout(doc: DevicesFile, default_node: str = "local", file: str | Path = "") -> Layout:
    """Components and pipelines of a devices file, or ConfigError for the first problem."""

    def fail(where: str, reason: str) -> ConfigError:
        return ConfigError(file or None, where, reason)

    devices: dict[str, tuple[int, DeviceConfig]] = {}
    components: dict[str, ComponentConfig] = {}
    owner: dict[str, int] = {}
    for i, dev in enumerate(doc.devices):
        where = f"devices[{i}] {dev.name!r}"
        if dev.name in devices:
            raise fail(where, f"duplicate device name (also devices[{devices[dev.name][0]}])")
        devices[dev.name] = (i, dev)
        for ch in dev.channels:
            cname = component_name(dev.driver, dev.address, ch)
            if cname in components:
                j = owner[cname]
                raise fail(
                    where,
                    f"channel {ch!r} gives component {cname}, which devices[{j}] "
                    f"{doc.devices[j].name!r} gives too (same driver, address and channel)",
                )
            owner[cname] = i
            components[cname] = ComponentConfig(
                name=cname,
                device=dev.name,
                driver=dev.driver,
                address=dev.address,
                channel=ch,
                node=dev.node or default_node,
                pollrate=dev.pollrate,
            )

    known = ", ".join(devices) or "none"
    pipelines: dict[str, PipelineLayout] = {}
    made_by: dict[str, int] = {}
    for i, pip in enumerate(doc.pipelines):
        pwhere = f"pipelines[{i}] {pip.name!r}"
        wildcard = pip.name.endswith(WILDCARD)
        if pip.name.count(WILDCARD) > int(wildcard):
            raise fail(pwhere, f"{WILDCARD!r} may only end a pipeline name, as in 'pip-*'")
        roles: dict[str, tuple[str, str]] = {}  # role -> (device, channel)
        each_role: str | None = None
        for j, entry in enumerate(pip.devices):
            ewhere = f"{pwhere} devices[{j}]"
            if entry.device not in devices:
                raise fail(ewhere, f"unknown device {entry.device!r} (known: {known})")
            dev = devices[entry.device][1]
            if entry.role in roles:
                raise fail(ewhere, f"duplicate role {entry.role!r}")
            if entry.channel == EACH:
                if not wildcard:
                    raise fail(
                        ewhere,
                        f"channel {EACH!r} is only allowed in a wildcard pipeline "
                        f"(a name ending in {WILDCARD!r}, e.g. {pip.name + '-' + WILDCARD!r})",
                    )
                if each_role is not None:
                    raise fail(
                        ewhere, f"only one entry may use channel {EACH!r} (role {each_role!r} does)"
                    )
                each_role = entry.role
            elif entry.channel not in dev.channels:
                raise fail(
                    ewhere,
                    f"channel {entry.channel!r} is not a channel of device {dev.name!r} "
                    f"(channels: {', '.join(dev.channels)})",
                )
            else:
                for other_role, used in roles.items():
                    if used == (entry.device, entry.channel):
                        raise fail(
                            ewhere,
                            f"channel {entry.channel!r} of device {dev.name!r} is already "
                            f"in role {other_role!r} of this pipeline",
                        )
            roles[entry.role] = (entry.device, entry.channel)
        if wildcard and each_role is None:
            raise fail(
                pwhere,
                f"a wildcard pipeline needs an entry with channel {EACH!r} "
                "(one pipeline is made per channel of that device)",
            )
        for pname, pl in _expand(pip.name, roles, each_role, devices):
            if pname in pipelines:
                raise fail(
                    pwhere,
                    f"duplicate pipeline name {pname!r} (also from pipelines[{made_by[pname]}] "
                    f"{doc.pipelines[made_by[pname]].name!r})",
                )
            if len(set(pl.values())) != len(pl):
                raise fail(
                    pwhere,
                    f"in {pname!r} one component would take two roles: {sorted(pl.items())}",
                )
            made_by[pname] = i
            pipelines[pname] = PipelineLayout(name=pname, roles=pl)
    # as tomato: a component exists only for a channel some pipeline uses (upstream's
    # devices_multidev.json gives 3 components, not 8); a node hosts no idle channels
    in_use = {cmp for pl in pipelines.values() for cmp in pl.roles.values()}
    components = {n: c for n, c in components.items() if n in in_use}
    devs = {
        n: d.model_copy(update={"node": d.node or default_node}) for n, (_, d) in devices.items()
    }
    return Layout(components=components, pipelines=pipelines, devices=devs)


def _expand(
    name: str,
    roles: dict[str, tuple[str, str]],
    each_role: str | None,
    devices: dict[str, tuple[int, DeviceConfig]],
) -> Iterable[tuple[str, dict[str, str]]]:
    def cname(device: str, channel: str) -> str:
        d = devices[device][1]
        return component_name(d.driver, d.address, channel)

    if each_role is None:
        yield name, {r: cname(d, ch) for r, (d, ch) in roles.items()}
        return
    each_dev = roles[each_role][0]
    for ch in devices[each_dev][1].channels:
        yield (
            name[: -len(WILDCARD)] + ch,
            {r: cname(d, ch if r == each_role else c) for r, (d, c) in roles.items()},
        )
