"""Task and attribute validation against :class:`AttrSpec`: pure, no driver code, no MQTT.

The scheduler runs :func:`validate_task` when matching a job (from the specs a node
published in component meta), and the node runs it again before a task starts, so a
payload is refused with the same message in both places.

pint is imported on first use: the specs in :mod:`tomato_mqtt.driver.spec` are read by
code that must stay light, and only coercing a quantity needs pint.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
from collections.abc import Collection, Mapping
from functools import cache
from types import ModuleType
from typing import Any

from tomato_mqtt.driver.spec import AttrSpec
from tomato_mqtt.errors import nearest

__all__ = ["TaskValidationError", "coerce_value", "to_jsonable", "validate_task"]


class TaskValidationError(ValueError):
    """A task or a value a lab user asked for that the component cannot take."""


@cache
def _pint() -> ModuleType:
    import pint

    from tomato_mqtt.driver.units import load_registry

    load_registry()  # the shared registry, from the parsed-definitions cache
    return pint


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _num(x: float | int) -> str:
    """A number as a person writes it: 10 not 10.0, 0.1 not 1e-01."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _short(val: Any) -> str:
    """A quantity or units in pint's short form, litres as labs write them: ``mL/min``,
    not pint's ``ml/min`` (a driver author's tour: a flow in ``mL/min`` was refused in
    ``ml``)."""
    # micro as the micro sign (U+00B5), as pint up to 0.25 writes it and keyboards type
    # it: pint 0.26 (Python 3.12+) writes the Greek mu (U+03BC), and the same refusal
    # read differently on another Python (a run of the tests on 3.13)
    text = f"{val:~P}".replace("\u03bc", "\u00b5")
    if "l" not in text:
        return text
    for name in getattr(getattr(val, "units", val), "_units", {}):
        if name.endswith(("liter", "litre")):
            sym = _pint().get_application_registry().get_symbol(name).replace("\u03bc", "\u00b5")
            if sym.endswith("l"):
                # (a symbol alone: not inside another's; ² and ³ end it, `mL²`)
                alone = rf"(?<![A-Za-z0-9_µ]){re.escape(sym)}(?![A-Za-z0-9_])"
                text = re.sub(alone, sym[:-1] + "L", text)
    return text


def _show(val: object) -> str:
    if isinstance(val, _pint().Quantity):
        return _short(val)
    if isinstance(val, str):
        return repr(val)
    if isinstance(val, float | int) and not isinstance(val, bool):
        return _num(val)
    return repr(val)


_INFINITY = re.compile(r"\s*[-+]?inf(inity)?\s*", re.IGNORECASE)


def _out_of_range(name: str, val: object) -> TaskValidationError:
    """A number a float cannot hold ("1e400", a 400-digit integer): it was taken as
    infinity (``passata set … max 1e400`` said "set to inf"), or its conversion raised
    OverflowError past every check ("validation failed: OverflowError: int too large to
    convert to float")."""
    text = val.strip() if isinstance(val, str) else "an integer beyond ±1.8e+308"
    if len(text) > 24 and isinstance(val, str):
        text = f"{text[:10]}…{text[-6:]} ({len(text)} characters)"
    return TaskValidationError(
        f"{name}: {text} is out of range: a number is at most ±{sys.float_info.max:.1e}"
    )


def _real(name: str, val: object, what: str) -> float:
    """A finite-or-infinite real number from a number or a numeric string; infinity only
    as said ("inf", "-infinity", a float that is one), not as a number too large."""
    if isinstance(val, bool):
        raise TaskValidationError(f"{name}: expected {what}, got the boolean {val}")
    if isinstance(val, numbers.Real):
        try:
            out = float(val)
        except OverflowError:
            raise _out_of_range(name, val) from None
    elif isinstance(val, str):
        try:
            out = float(val.strip())
        except ValueError:
            raise TaskValidationError(f"{name}: expected {what}, got {val!r}") from None
        if math.isinf(out) and not _INFINITY.fullmatch(val):
            raise _out_of_range(name, val)
    else:
        raise TaskValidationError(f"{name}: expected {what}, got {_show(val)}")
    if math.isnan(out):
        raise TaskValidationError(f"{name}: expected {what}, got NaN")
    return out


def _to_int(name: str, val: object) -> int:
    if isinstance(val, numbers.Integral) and not isinstance(val, bool):
        _real(name, val, "an integer")  # one that a float holds, as every number here
        return int(val)
    x = _real(name, val, "an integer")
    if not x.is_integer():
        raise TaskValidationError(f"{name}: expected an integer, got {_show(val)}")
    return int(x)


def _to_bool(name: str, val: object) -> bool:
    if isinstance(val, bool):
        return val
    if isinstance(val, numbers.Integral) and int(val) in (0, 1):
        return bool(val)
    if isinstance(val, str):
        s = val.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise TaskValidationError(f"{name}: expected true or false, got {_show(val)}")


def _to_str(name: str, val: object) -> str:
    if isinstance(val, str):
        return val
    if isinstance(val, numbers.Real) and not isinstance(val, bool):
        return _num(val) if isinstance(val, float | int) else str(val)
    raise TaskValidationError(f"{name}: expected text, got {_show(val)}")


_NUMBER_THEN_UNITS = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*")


def _parse_quantity(pm: Any, text: str) -> Any:
    """``text`` as a pint quantity. pint parses ``"30 degC"`` as 30 times a degree
    Celsius, which offset units refuse (OffsetUnitCalculusError): a number followed by
    units is read as magnitude and units instead (a setpoint of "30 degC" was refused)."""
    try:
        # pint raises anything from UndefinedUnitError to AssertionError on bad text
        return pm.Quantity(text)
    except Exception:
        m = _NUMBER_THEN_UNITS.fullmatch(text)
        if m is None or not m.group(2):
            raise
        return pm.Quantity(float(m.group(1)), m.group(2))


def _to_quantity(name: str, spec: AttrSpec, val: object) -> Any:
    pm = _pint()
    units = spec.units
    where = f" in {units}" if units else ""
    q: Any
    if isinstance(val, pm.Quantity):
        q = val
        if q._REGISTRY is not pm.get_application_registry().get():
            # a driver's own UnitRegistry: move to the shared one so comparisons work
            q = pm.Quantity(q.magnitude, str(q.units))
    elif isinstance(val, bool):
        raise TaskValidationError(f"{name}: expected a quantity{where}, got the boolean {val}")
    elif isinstance(val, numbers.Real):
        q = pm.Quantity(_real(name, val, f"a quantity{where}"))
    elif isinstance(val, str):
        try:
            q = _parse_quantity(pm, val)
        except Exception:
            raise TaskValidationError(
                f"{name}: cannot read {val!r} as a quantity{where}"
                f" (write e.g. '1.5 {units or 's'}')"
            ) from None
        if not isinstance(q, pm.Quantity):  # pint returns a plain number for "5"
            q = pm.Quantity(q)
        m = _NUMBER_THEN_UNITS.fullmatch(val)
        if m is not None and isinstance(q.magnitude, float) and math.isinf(q.magnitude):
            raise _out_of_range(name, m.group(1))  # "1e400 s" (not "inf s")
    else:
        raise TaskValidationError(f"{name}: expected a quantity{where}, got {_show(val)}")
    if not isinstance(q.magnitude, numbers.Real):
        raise TaskValidationError(f"{name}: expected a single number{where}, got {_show(val)}")
    try:  # pint reads "1000…000 s" (400 digits) as an int: no float holds it (a review)
        magnitude = float(q.magnitude)
    except OverflowError:
        raise _out_of_range(name, val if isinstance(val, str) else q.magnitude) from None
    if math.isnan(magnitude):
        raise TaskValidationError(f"{name}: expected a single number{where}, got {_show(val)}")
    if units is None:
        return q
    try:
        target = pm.Unit(units)
    except Exception:
        raise TaskValidationError(f"{name}: the driver declares unknown units {units!r}") from None
    if q.dimensionless and not target.dimensionless:
        # a bare number is taken in the attribute's units, as in tomato
        return pm.Quantity(q.magnitude, target)
    if q.dimensionality != target.dimensionality:
        raise TaskValidationError(
            f"{name}: {_show(q)} has the wrong dimensionality:"
            f" {q.dimensionality} instead of {target.dimensionality} (use units like {units})"
        )
    return q


def coerce_value(name: str, spec: AttrSpec, val: object) -> object:
    """Check ``val`` against ``spec`` and return it in the attribute's type.

    Returns a float, int, str or bool, or for quantity attributes a ``pint.Quantity``
    converted to ``spec.units`` (a bare number is taken in those units). Limits of a
    quantity are compared in ``spec.units``. Raises :class:`TaskValidationError` naming ``name``.
    """
    if val is None:
        raise TaskValidationError(f"{name}: a value is required, got None")
    out: object
    cmp: float | int | None = None  # the number compared against minimum / maximum
    shown: str
    match spec.type:
        case "float":
            out = cmp = _real(name, val, "a number")
            shown = _num(out)
        case "int":
            out = _to_int(name, val)
            cmp = out  # an int compares with the float limits exactly, however large
            shown = str(out)
        case "bool":
            out = _to_bool(name, val)
            shown = str(out)
        case "str":
            out = _to_str(name, val)
            shown = repr(out)
        case "quantity":
            q = _to_quantity(name, spec, val)
            shown = _show(q)  # as the user wrote it, e.g. "1 ms"
            if spec.units:
                q = q.to(spec.units)  # drivers and data see the canonical units
            if type(q.magnitude) is not float:  # "2" is read by pint as the int 2: a
                # magnitude is a float however written (`passata set … param 2` made the
                # file's `param` int64, float64 after "2.0": a side-by-side tour)
                q = _pint().Quantity(float(q.magnitude), q.units)
            out = q
            cmp = float(q.magnitude)
    if cmp is not None:
        unit = ""
        if spec.type == "quantity" and spec.units:
            unit = f" {_short(_pint().Unit(spec.units))}"
        elif spec.units:  # a number's units are informative: said as declared (a
            # refusal of "200 is above the maximum 100" left the user guessing: a tour)
            unit = f" {spec.units}"
            shown += unit
        if spec.minimum is not None and cmp < spec.minimum:
            raise TaskValidationError(
                f"{name}: {shown} is below the minimum {_num(spec.minimum)}{unit}"
            )
        if spec.maximum is not None and cmp > spec.maximum:
            raise TaskValidationError(
                f"{name}: {shown} is above the maximum {_num(spec.maximum)}{unit}"
            )
    if spec.options is not None:
        probe = cmp if spec.type == "quantity" else out
        if probe not in spec.options:
            allowed = ", ".join(str(o) for o in spec.options)
            raise TaskValidationError(f"{name}: {shown} is not one of the options: {allowed}")
    return out


def validate_task(
    capabilities: Collection[str],
    attrs: Mapping[str, AttrSpec],
    technique_name: str,
    task_params: Mapping[str, object],
) -> dict[str, object]:
    """Check that a component can run a task; return its parameters, coerced.

    Raises :class:`TaskValidationError` with a message a lab user can act on.
    """
    if technique_name not in capabilities:
        known = ", ".join(sorted(capabilities)) or "none"
        raise TaskValidationError(
            f"technique {technique_name!r} is not supported by this component (supported: {known})"
        )
    out: dict[str, object] = {}
    for name, val in task_params.items():
        spec = attrs.get(name)
        if spec is None:
            # the attributes a task may set, and the one meant (read-only ones were listed
            # as known, and `ramprate` got no word of `ramp_rate`: a driver author's tour)
            settable = sorted(a for a, s in attrs.items() if s.rw)
            near = nearest(name, settable)
            hint = f"did you mean {near!r}? " if near else ""
            raise TaskValidationError(
                f"unknown parameter {name!r} for technique {technique_name!r} ({hint}a task "
                f"may set: {', '.join(settable) or 'none'})"
            )
        if not spec.rw:
            raise TaskValidationError(
                f"parameter {name!r} is read-only and cannot be set by a task"
            )
        out[name] = coerce_value(name, spec, val)
    return out


def to_jsonable(val: object) -> float | int | str | bool | None:
    """A value as JSON can carry it; a quantity becomes text ``coerce_value`` reads back."""
    if val is None or isinstance(val, bool | int | str):
        return val
    if isinstance(val, float):
        return val if math.isfinite(val) else str(val)
    if isinstance(val, numbers.Integral):
        return int(val)
    if isinstance(val, numbers.Real):
        return to_jsonable(float(val))
    item = getattr(val, "item", None)  # numpy scalars, incl. numpy.bool_
    if callable(item) and type(val).__module__ == "numpy":
        inner = item()
        if isinstance(inner, bool | int | float | str):
            return to_jsonable(inner)
    return str(val)
