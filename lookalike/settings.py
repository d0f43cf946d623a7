"""Loading per-service pydantic-settings classes, failing fast with a message that names the setting."""
from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(SystemExit):
    """Raised when a service's configuration is invalid; its message names each bad setting."""


def load_settings(cls: type[SettingsT], **overrides) -> SettingsT:
    """Builds `cls` from the environment (plus overrides); invalid values stop the service.

    The error names the environment variable, e.g. `LOOKALIKE_GATEWAY_HTTP_PORT: Input should be ...`.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "?"
            lines.append(f"  {prefix}{name.upper()}: {err['msg']} (got {err.get('input')!r})")
        message = f"invalid configuration for {cls.__name__}:\n" + "\n".join(lines)
        print(message, file=sys.stderr)
        raise ConfigError(message) from None
