"""Small dataclass configs that round-trip through versioned JSON dicts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Self

from layerpeel.errors import ConfigError

CONFIG_VERSION = 1


@dataclasses.dataclass
class ConfigBase:
    """Base for every layerpeel config: `to_dict`/`from_dict` with a version, and `validate`."""

    def validate(self) -> None:
        """Raise `ConfigError` if a value is impossible; subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": type(self).__name__, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ConfigBase):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        version = data.get("version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise ConfigError(
                f"{cls.__name__}: config version {version!r} is newer than this layerpeel "
                f"understands ({CONFIG_VERSION})"
            )
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names) - {"kind", "version"})
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        hints = _resolved_types(cls)
        for name, value in data.items():
            if name not in names:
                continue
            hint = hints.get(name)
            if isinstance(hint, type) and issubclass(hint, ConfigBase) and isinstance(value, dict):
                value = hint.from_dict(value)
            kwargs[name] = value
        try:
            cfg = cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from None
        cfg.validate()
        return cfg

    def to_json(self, path: str | Path) -> None:
        from layerpeel.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> Self:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        return cls.from_dict(data)


def _resolved_types(cls: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward references we cannot resolve are just skipped
        return {}
