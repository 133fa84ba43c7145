"""Small value classes without ``dataclasses``: :class:`Record`.

The CLI's one-request calls (``ketchup status``, ``passata get``, ``ketchup submit``)
import the few modules that say where the broker is and what the topics are; issue 15
asks such a call to take at most three bare interpreter starts (~25 ms). Importing
``dataclasses`` loads ``inspect`` (with ``ast``, ``dis``, ``tokenize``): ~5 ms of it, more
than the request's round trip. So those modules' value classes derive from
:class:`Record`: named fields (``__slots__``), compared, hashed and printed by them, and
immutable unless a class says ``_frozen = False``, as ``@dataclass(frozen=True)`` or
``@dataclass`` would make them. Everything else in the project may use dataclasses.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is ~2 ms: only for the type checker
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

    R = TypeVar("R", bound="Record")

__all__ = ["Record"]


class Record:
    """A value with the named fields of its ``__slots__``.

    A subclass annotates its fields in order, lists them in ``__slots__`` (any order)
    and writes its ``__init__`` with their defaults, ending in ``self._init(locals())``.
    A slot whose name starts with ``_`` is not a field (a cache, say): set to None by
    ``_init``, not compared, printed or copied.
    """

    __slots__ = ()
    #: a frozen record cannot be changed after ``__init__`` (and is hashable)
    _frozen: ClassVar[bool] = True
    _fields: ClassVar[tuple[str, ...]] = ()
    _slots: ClassVar[tuple[str, ...]] = ()  # every slot, the base classes' too

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        inherited = cls._fields  # a subclass of a record has its fields, then its own
        slots = tuple(dict.fromkeys(n for k in cls.__mro__ for n in getattr(k, "__slots__", ())))
        own = cls.__annotations__  # its own (3.10+), in the order written
        cls._fields = inherited + tuple(
            n for n in own if n[0] != "_" and n in slots and n not in inherited
        )
        cls._slots = slots

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the fields, in the order they are declared."""
        return cls._fields

    def _init(self, values: dict[str, Any]) -> None:
        for name in self._slots:
            object.__setattr__(self, name, values[name] if name[0] != "_" else None)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.fields())

    def asdict(self) -> dict[str, Any]:
        """The fields and their values, in order (a shallow ``dataclasses.asdict``)."""
        return {n: getattr(self, n) for n in self.fields()}

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes`` (as ``dataclasses.replace``)."""
        unknown = set(changes) - set(self.fields())
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        return type(self)(**{**self.asdict(), **changes})

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")
        object.__delattr__(self, name)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        if not self._frozen:
            raise TypeError(f"unhashable type: {type(self).__name__!r} (it can change)")
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle go through __init__ (a frozen record refuses setattr)
        return (_rebuild, (type(self), self.asdict()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.fields())
        return f"{type(self).__name__}({inner})"


def _rebuild(cls: type[R], fields: dict[str, Any]) -> R:
    return cls(**fields)
