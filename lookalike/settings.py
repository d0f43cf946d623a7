"""Loading per-service pydantic-settings classes, failing fast with a message that names the setting."""
from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(SystemExit):
    """Raised when a service's configuration is invalid; its message names each bad setting."""


def _setting_name(cls: type[BaseSettings], loc: tuple) -> str:
    """The name an error gives a setting: `cls.setting_name(field)` where the class defines it (a service with
    more than one source, e.g. the embedder's LOOKALIKE_EMBEDDER_CUT / handler.cut), else the variable."""
    describe = getattr(cls, "setting_name", None)
    if callable(describe) and loc:
        rest = "".join(f"[{part}]" for part in loc[1:])
        return f"{describe(str(loc[0]))}{rest}"
    name = ".".join(str(p) for p in loc) or "?"
    return f"{cls.model_config.get('env_prefix', '')}{name.upper()}"


def load_settings(cls: type[SettingsT], **overrides) -> SettingsT:
    """Builds `cls` from the environment (plus overrides); invalid values stop the service.

    The error names the environment variable, e.g. `LOOKALIKE_GATEWAY_HTTP_PORT: Input should be ...`
    (or what `cls.setting_name(field)` says, where the class defines it).
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = [f"  {_setting_name(cls, err['loc'])}: {err['msg']} (got {err.get('input')!r})"
                 for err in exc.errors()]
        message = f"invalid configuration for {cls.__name__}:\n" + "\n".join(lines)
        print(message, file=sys.stderr)
        raise ConfigError(message) from None
