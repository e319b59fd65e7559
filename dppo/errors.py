"""The error a user's config causes (re-exported by dppo.config, where most code imports it from)."""


class ConfigError(ValueError):
    """A config value is missing or invalid; the message names the fix."""


def require(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)
