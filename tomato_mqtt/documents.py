"""Reading a YAML or JSON document: a payload, the devices file, a user's file.

:func:`parse_document` parses one (libyaml's safe loader where PyYAML has it), refuses
what it could be made to build before it is built (aliases, merge keys and tags are
checked on the composed graph), and :func:`check_values` refuses what JSON cannot carry;
every refusal is a :class:`DocumentError` naming where (docs/security.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_DEPTH", "DocumentError", "check_values", "kind_of", "make_loader", "parse_document"]


class DocumentError(ValueError):
    """A YAML or JSON document that does not parse; ``location`` names line and column."""

    def __init__(self, location: str | None, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(f"{location}: {reason}" if location else reason)


def parse_document(text: str, json_only: bool = False) -> Any:
    """Parse YAML (or JSON, which is YAML too); syntax errors name the line.

    ``json_only`` parses with :mod:`json` (stricter and faster for ``.json`` files).
    """
    try:
        return _parse(text, json_only)
    except RecursionError:  # [[[[...]]]]: both parsers recurse per level
        raise DocumentError(None, _DEEP) from None


_DEEP = "nested too deeply to be a payload"

#: how deep lists and mappings may nest in a document: a payload or settings file is a
#: few levels deep; past ~250 pydantic's serializer fails ("internal error", a review)
MAX_DEPTH = 100


def _parse(text: str, json_only: bool) -> Any:
    import json

    if json_only:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DocumentError(
                f"line {e.lineno}, column {e.colno}", f"invalid JSON: {e.msg}"
            ) from None
        except ValueError:  # Python's limit on the digits of an int
            raise DocumentError(None, _HUGE) from None
        check_values(data)
        return data
    import yaml

    loader = _loader()(text)
    try:
        node = loader.get_single_node()  # the graph, aliases not yet expanded
        if node is None:
            return None
        if "*" in text or "!" in text or "<<" in text:  # else nothing for it to find
            _check_nodes(node)  # before anything is built: what it would build is bounded
        data = loader.construct_document(node)
    except DocumentError:
        raise
    except yaml.MarkedYAMLError as e:
        if "maximum nesting depth" in str(e.problem):  # libyaml's limit (1000 levels)
            raise DocumentError(None, _DEEP) from None
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        what = e.problem or e.context or "syntax error"
        ctx = e.context_mark
        if e.problem and e.context:
            # where the construct began: the problem is where the parser gave up, often a
            # line after the mistake ("[oops" on line 3 was told as line 4: a tour)
            began = (
                f" that begins at line {ctx.line + 1}, column {ctx.column + 1}"
                if ctx is not None and mark is not None and ctx.line != mark.line
                else ""
            )
            what = f"{e.problem} ({e.context}{began})"
        if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
            # libyaml says "found character that cannot start any token": a tab, which a
            # newcomer's editor put there unseen (a tour)
            what += ": a tab there; YAML indents with spaces only"
        raise DocumentError(where, f"invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise DocumentError(None, f"invalid YAML: {e}") from None
    except ValueError as e:  # Python's limit on the digits of an int, or another value
        if "digits" in str(e):
            raise DocumentError(None, _HUGE) from None
        raise DocumentError(None, f"invalid YAML: {e}") from None
    finally:
        loader.dispose()
    check_values(data)
    return data


_HUGE = "a number with more than 4300 digits: no value of a payload or settings is that long"


def _char_at(text: str, line: int, column: int) -> str:
    """The character at a YAML mark (0-based), "" where there is none."""
    lines = text.split("\n")
    if not 0 <= line < len(lines) or not 0 <= column < len(lines[line]):
        return ""
    return lines[line][column]


def kind_of(v: Any) -> str:
    """What a value of a document is, for a message saying it is not what was expected."""
    if v is None:
        return "empty"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str):
        return "a string"
    return type(v).__name__


def check_values(data: Any) -> None:
    """Refuse what JSON cannot carry as it is: NaN and infinity (they became null on the
    way, "input should be a valid number (got None)"), binary data (``!!binary``: it
    became the text "b'...'"); found by a security audit. A date stays (as text). Lists
    and mappings nested more than ``MAX_DEPTH`` levels are refused too (a parsed payload
    of a script has not been through :func:`parse_document`)."""
    import math

    stack: list[tuple[list[str | int], Any]] = [([], data)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            why = f"{v!r} is not a value tomato-mqtt takes: give a finite number"
        elif isinstance(v, int) and not isinstance(v, bool) and not _fits_a_float(v):
            # a 400-digit integer passed the payload and stopped every pipeline's
            # validation ("OverflowError: int too large to convert to float"), queued for ever
            why = "an integer beyond ±1.8e+308 is out of range (no float holds it)"
        elif isinstance(v, (bytes, bytearray)):
            why = "binary data (!!binary) is not a value tomato-mqtt takes: give text"
        elif len(path) > MAX_DEPTH and isinstance(v, (dict, list, tuple)):
            why = f"{_DEEP} (more than {MAX_DEPTH} levels)"
        elif isinstance(v, dict) and any(not _json_key(k) for k in v):
            k = next(k for k in v if not _json_key(k))
            what = "binary data (!!binary)" if isinstance(k, (bytes, bytearray)) else repr(k)
            why = f"the key {what} is not text: quote it (a key of a mapping is text)"
        else:
            if isinstance(v, dict):
                stack.extend(([*path, str(k)], x) for k, x in v.items())
            elif isinstance(v, (list, tuple)):
                stack.extend(([*path, i], x) for i, x in enumerate(v))
            continue
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        raise DocumentError(where or None, why)


def _fits_a_float(v: int) -> bool:
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _json_key(k: Any) -> bool:
    """``k`` is a key JSON carries (as text): a date is not (``2001-01-01: 1``)."""
    return k is None or isinstance(k, (str, int, float, bool))


_LOADER: Any = None


def _loader() -> Any:
    """The loader of YAML documents (:func:`make_loader` of PyYAML's safe loader, libyaml's
    when PyYAML has it: ~8x faster, a list of 150,000 numbers in 0.85 s, 7.2 s in Python);
    made on first use, PyYAML is imported only when a YAML document is read."""
    global _LOADER
    if _LOADER is None:
        import yaml

        _LOADER = make_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return _LOADER


#: bits past which an int of a document is converted to text to know that it has at most
#: 4300 decimal digits (Python's limit on converting an int to text, i.e. to JSON), which
#: ``0x``, ``0o``, ``0b`` and ``1:59:59`` (sexagesimal) numbers do not meet as they are read
_INT_BITS = 14_000  # below 4300 * log2(10)


def make_loader(base: Any) -> Any:
    """``base`` (a PyYAML safe loader) whose scalars of the core types are read as
    checked values: a scalar that is not what its tag says is an error at its line, not
    an ``IndexError`` or ``KeyError`` ("internal error": ``!!int ''``, ``!!bool foo``);
    a number longer than 4300 digits is refused before it is computed (1 MB of
    ``1:59:59:...`` took PyYAML 30 s of CPU, and its value no JSON could carry: a
    review)."""
    import yaml
    from yaml.constructor import ConstructorError

    def checked(kind: str, build: Any) -> Any:
        def construct(self: Any, node: Any) -> Any:
            text = str(node.value)
            if kind == "int" and len(text.replace("_", "")) > 4300:
                raise DocumentError(_at(node), _HUGE)
            try:
                value = build(self, node)
            except (ValueError, ArithmeticError, LookupError, AttributeError, TypeError):
                shown = text if len(text) <= 40 else text[:37] + "..."
                raise ConstructorError(
                    None, None, f"{shown!r} is not a valid {kind}", node.start_mark
                ) from None
            if kind == "int" and value.bit_length() > _INT_BITS:
                try:  # near the limit: as JSON will (Python's own check)
                    str(value)
                except ValueError:
                    raise DocumentError(_at(node), _HUGE) from None
            return value

        return construct

    class Loader(base):  # type: ignore[misc]
        pass

    c = yaml.constructor.SafeConstructor
    for kind, build in (
        ("int", c.construct_yaml_int),
        ("float", c.construct_yaml_float),
        ("bool", c.construct_yaml_bool),
        ("null", c.construct_yaml_null),
        ("timestamp", c.construct_yaml_timestamp),
    ):
        Loader.add_constructor(f"tag:yaml.org,2002:{kind}", checked(kind, build))
    return Loader


def _at(node: Any) -> str | None:
    mark = getattr(node, "start_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None


#: values a YAML document's aliases (``*name``) may add to it: a few hundred bytes of
#: nested aliases expand to millions of values (28 MB of JSON from 500 bytes), which
#: every later step (validation, JSON, the state file) would walk
MAX_VALUES = 100_000
#: characters of text a YAML document's aliases may add to it: one alias to a long
#: string, repeated, is 400 MB of JSON from 200 kB (a review); as long as the longest
#: payload text (``wire.commands.PAYLOAD_TEXT_MAX``)
MAX_CHARS = 1_000_000
#: key-value pairs merge keys (``<<``) may copy: each mapping that merges another gets a
#: copy of its pairs, so 900 nested merges of a 100,000-key mapping in 1 MB were 42 s of
#: CPU (a review)
MAX_MERGED = 100_000
_CAP = 10**15  # sizes saturate here: a chain of aliases doubles them at each link

#: the tags a document's nodes may have: what JSON carries, and a date (as text);
#: ``!!binary`` is refused after, by :func:`check_values`, naming where
_TAGS = {
    f"tag:yaml.org,2002:{t}"
    for t in ("null", "bool", "int", "float", "str", "timestamp", "binary", "seq", "map")
}
_MERGE = "tag:yaml.org,2002:merge"
#: tags of mapping keys only: the merge key ``<<``, and ``=`` (read as text)
_KEY_TAGS = {_MERGE, "tag:yaml.org,2002:value"}


def _check_nodes(root: Any) -> None:
    """Refuse a YAML node graph, before it is built, that nests lists and mappings more
    than ``MAX_DEPTH`` levels (as :func:`check_values` counts them), refers to itself,
    has a tag JSON cannot carry (``!!pairs``, ``!!omap``, ``!!set``: tuples and sets,
    which no later check entered), whose aliases (``*name``, also through merge keys
    ``<<: *name``) add more than ``MAX_VALUES`` values or ``MAX_CHARS`` characters to
    what is written, or whose merge keys copy more than ``MAX_MERGED`` pairs. An alias is
    the same node met again: each node's expanded size is counted once and added up
    where it is met, so the walk is as long as the text, however much would be built."""
    import yaml

    # id(node) -> (values, characters, pairs once its merges are done), expanded
    size: dict[int, tuple[int, int, int]] = {}
    open_: set[int] = set()  # the nodes on the path from the root
    distinct_values = distinct_chars = merged = 0
    # (node, its parent's entry, its key there, its depth, whether its children are counted)
    stack: list[tuple[Any, Any, Any, int, bool]] = [(root, None, None, 0, False)]
    while stack:
        entry = stack.pop()
        node, parent, name, depth, done = entry
        key = id(node)
        if done:
            values, chars = 1, 0
            for child in _children(node):
                v, c, _ = size[id(child)]
                values = min(values + v, _CAP)
                chars = min(chars + c, _CAP)
            pairs = 0
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.tag == _MERGE:  # the pairs of what it merges are copied into it
                        inner = v.value if isinstance(v, yaml.SequenceNode) else [v]
                        got = sum(size[id(m)][2] for m in inner)
                        merged = min(merged + got, _CAP)
                        pairs += got
                    else:
                        pairs += 1
                if merged > MAX_MERGED:
                    raise DocumentError(
                        _node_path(entry),
                        f"its merge keys (<<) copy more than {MAX_MERGED:,} key-value "
                        "pairs: write the mapping out, or merge fewer levels deep",
                    )
            size[key] = (values, chars, min(pairs, _CAP))
            open_.discard(key)
            continue
        if key in size:
            continue
        if key in open_:
            raise DocumentError(_node_path(entry), "an alias (*name) refers to itself")
        if depth > MAX_DEPTH and not isinstance(node, yaml.ScalarNode):
            raise DocumentError(_node_path(entry), f"{_DEEP} (more than {MAX_DEPTH} levels)")
        if node.tag not in _TAGS and not (node.tag in _KEY_TAGS and name is not None):
            what = node.tag.rsplit(":", 1)[-1] if node.tag.startswith("tag:yaml") else node.tag
            raise DocumentError(
                _node_path(entry),
                f"!!{what} is not a value tomato-mqtt takes: give a mapping, a list or text"
                if node.tag.startswith("tag:yaml")
                else f"the tag {what} is not a value tomato-mqtt takes",
            )
        if isinstance(node, yaml.ScalarNode):
            size[key] = (1, len(node.value), 0)
            distinct_values += 1
            distinct_chars += len(node.value)
            continue
        distinct_values += 1
        open_.add(key)
        stack.append((node, parent, name, depth, True))
        # each child one level down, as check_values counts (a key and its value alike);
        # reversed: met in the document's order
        if isinstance(node, yaml.SequenceNode):
            items = list(enumerate(node.value))
            stack.extend((c, entry, i, depth + 1, False) for i, c in reversed(items))
        else:
            for k, v in reversed(node.value):
                label = _label(k.value) if isinstance(k, yaml.ScalarNode) else "?"
                stack.append((v, entry, label, depth + 1, False))
                stack.append((k, entry, label, depth + 1, False))
    values, chars, _ = size[id(root)]
    if values - distinct_values > MAX_VALUES or chars - distinct_chars > MAX_CHARS:
        raise DocumentError(
            None,
            f"its aliases (*name) expand to more than {MAX_VALUES:,} values or "
            f"{MAX_CHARS:,} characters more than is written: write the repeated parts "
            "out, or use fewer levels of aliases",
        )


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return [n for pair in node.value for n in pair]


def _label(key: str) -> str:
    """A key as a location names it: control characters escaped, at most 40 characters
    (a key is the user's text, shown on their terminal)."""
    shown = key if key.isprintable() else repr(key)[1:-1]
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _node_path(entry: Any) -> str | None:
    parts: list[str] = []
    while entry[1] is not None:
        key = entry[2]
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        entry = entry[1]
    return "".join(reversed(parts)).lstrip(".") or None
