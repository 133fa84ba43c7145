"""The names a driver gives its variables, dimensions and coordinates, and its text: what a
NetCDF file holds as it is.

A data-fidelity review found names and text the file changed or could not take, while
the job ended ``c`` or the file was tried again for ever: ``I/V`` became a group ``I``
with a variable ``V``; a name beginning with ``.``, ending with a space or longer than
256 bytes made the whole file unwritable; a NUL cut text short (``"a\\x00b"`` became
``"a"``). They are refused at the point, naming the variable, as a driver's other
mistakes are: the task ends ``ce`` with the points before it in the file.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "GOOD_NAMES",
    "MAX_NAME_BYTES",
    "check_names",
    "name_problem",
    "nonfinite_seen",
    "saw_nonfinite",
    "text_problem",
]

#: NetCDF's NC_MAX_NAME
MAX_NAME_BYTES = 256

#: names found good (a point's names are checked once per run of the process, not per point)
GOOD_NAMES: set[str] = set()

#: whether a driver of this process handed over an infinity (or a NaN) as a plain value:
#: until then the node's flush need not look through list columns for infinities (two
#: scans of every column of every batch, ~0.24 µs a point at 5 variables)
_NONFINITE = [False]


def saw_nonfinite() -> None:
    _NONFINITE[0] = True


def nonfinite_seen() -> bool:
    return _NONFINITE[0]


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a variable, dimension or coordinate of the file; None if
    it can."""
    if type(name) is not str:  # the batch's JSON needs text keys (a node died of it)
        return f"names must be text, not {type(name).__name__} ({name!r})"
    if not name:
        return "the name is empty"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return (
            f"the name is {size} bytes long (UTF-8), more than the {MAX_NAME_BYTES} a file's may be"
        )
    if "/" in name:
        return "the name holds '/', which the file takes for a group's path"
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        return f"the name holds the control character {bad!r}"
    if name[-1] == " ":  # (netCDF's rule: an ASCII space; a no-break space is kept)
        return "the name ends with a space"
    first = name[0]
    if first.isascii() and not (first.isalnum() or first == "_"):
        return (
            f"the name begins with {first!r}: a file's names begin with a letter, a digit, "
            "'_' or a non-ASCII character"
        )
    nfc = unicodedata.normalize("NFC", name)
    if nfc != name:
        return (
            f"the name ({name!a}) is not in Unicode's NFC form, in which the file keeps "
            f"names: write {nfc!a}"
        )
    return None


def check_names(names: object, what: str = "variable") -> None:
    """Raise ValueError naming the first of ``names`` that cannot name a variable (or
    ``what``) of the file."""
    if GOOD_NAMES.issuperset(names):  # type: ignore[arg-type]
        return
    for name in names:  # type: ignore[attr-defined]
        why = name_problem(name)
        if why is not None:
            if type(name) is not str:
                raise ValueError(f"{what} {why}")
            shown = repr(name if len(name) <= 60 else name[:57] + "…")
            raise ValueError(f"{what} {shown}: {why}")
        if len(GOOD_NAMES) >= 10_000:
            GOOD_NAMES.clear()
        GOOD_NAMES.add(name)


#: the integers a point may carry: the files' 64 bits (uint64 above int64's range); 2**70
#: made the node's encoding of the whole batch fail, and the points before it were lost
#: (a driver author's tour)
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def int_problem(v: int) -> str:
    """Why the file cannot hold the integer ``v`` (outside INT_MIN..INT_MAX)."""
    digits = len(str(abs(v)))
    shown = str(v) if digits <= 30 else f"of {digits} digits"
    return f"the integer {shown} is beyond the 64 bits a file holds (return a float)"


def text_problem(text: str) -> str | None:
    """Why the file cannot hold ``text`` as it is; None if it can (NetCDF's strings end
    at a NUL)."""
    if "\x00" in text:
        return "text holds a NUL character, where the file would cut it short"
    if not text.isascii():  # (a flag of the string: no scan for ASCII text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (bytes read with
            # errors="surrogateescape"): the batch could not be encoded, and the points
            # before it were lost with it (a driver author's tour)
            return (
                f"text is not valid Unicode ({e.reason} at character {e.start}): the wire "
                "(UTF-8) cannot carry it"
            )
    return None
