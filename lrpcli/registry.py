"""Name -> object registries with canonical names and "did you mean" on a miss.

Rules, composites and canonizers are all looked up by name. Names are canonical
snake_case; hyphenated and mixed-case spellings are accepted everywhere
(``epsilon-plus-flat`` == ``epsilon_plus_flat``).
"""

from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a user-given name."""
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def suggest(name: str, choices: list[str]) -> str | None:
    """A 'did you mean ...?' hint for ``name`` among ``choices`` (compared case-insensitively), or None."""
    by_key: dict[str, str] = {}
    for choice in choices:
        by_key.setdefault(canonical_name(choice), choice)
    close = difflib.get_close_matches(canonical_name(name), list(by_key), n=3, cutoff=0.5)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{by_key[c]}'" for c in close) + "?"


class Registry(Generic[T]):
    """A sorted, duplicate-free mapping from canonical names (and aliases) to objects."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> T:
        key = canonical_name(name)
        if key != name:
            raise ValueError(f"{self.kind} name '{name}' is not canonical (use '{key}')")
        if key in self._items or key in self._aliases:
            raise ValueError(f"{self.kind} '{key}' is registered twice")
        self._items[key] = obj
        for alias in aliases:
            alias_key = canonical_name(alias)
            if alias_key in self._items or alias_key in self._aliases:
                raise ValueError(f"{self.kind} alias '{alias_key}' is registered twice")
            self._aliases[alias_key] = key
        return obj

    def resolve(self, name: str) -> str:
        """The canonical name for ``name``; ConfigError with suggestions on a miss."""
        key = canonical_name(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            hint = suggest(key, self.names() + sorted(self._aliases))
            known = ", ".join(self.names())
            raise ConfigError(
                f"unknown {self.kind} '{name}' (known: {known})",
                hint=hint,
            )
        return key

    def get(self, name: str) -> T:
        return self._items[self.resolve(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name)
        return key in self._items or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
