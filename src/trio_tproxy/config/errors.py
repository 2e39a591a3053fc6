"""Configuration errors, reported as ``message @ $.path`` lines.

Every layer of config handling (TOML syntax, structuring, cross-checks, rule lists,
geodata) reports through :class:`ConfigErrors`, so ``trio-tproxy check`` can print all
problems of a file at once instead of stopping at the first.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


class BadValue(ValueError):
    """A value that parsed as the right Python type but means nothing valid.

    Raised by the value hooks (durations, ports, CIDRs, rule entries); its text is shown
    to the user as is, so it must say what was wrong and what is expected.
    """


@attrs.frozen
class ConfigError:
    """One problem; ``path`` is None for problems of the file as a whole (unreadable)."""

    message: str
    path: str | None = "$"

    def __str__(self) -> str:
        return self.message if self.path is None else f"{self.message} @ {self.path}"


class ConfigErrors(Exception):
    """One or more configuration errors; ``str()`` is one ``message @ $.path`` per line."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors: tuple[ConfigError, ...] = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @classmethod
    def single(cls, message: str, path: str | None = "$") -> ConfigErrors:
        return cls([ConfigError(message, path)])
