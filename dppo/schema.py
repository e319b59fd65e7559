"""Settings declared with their type, allowed range and a one-line doc, checked before anything is built.

A config group's schema is a dataclass of `setting(...)` fields (env/settings.py, agent/finetune/settings.py and
each algorithm's agent); `check_group` validates the composed group against it: an unknown key, a value of the
wrong type or one out of range stops the run with one line naming the key, the value and what is allowed.
The YAML files in cfg/ give the values; `python script/settings_reference.py` writes docs/SETTINGS.md from the
schemas.
"""

import dataclasses
import types
import typing

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from dppo.errors import ConfigError


def setting(doc: str, low: float | None = None, high: float | None = None, above: float | None = None,
            choices: tuple | None = None, default=dataclasses.MISSING):
    """A schema field: `doc` (one line), the allowed range (low <= value <= high, value > above) or `choices`.
    Without a default the value comes from the config (cfg/*.yaml); None passes the range when the type allows
    it."""
    return dataclasses.field(default=default, metadata={"doc": doc, "low": low, "high": high, "above": above,
                                                        "choices": choices})


def allowed(field: dataclasses.Field) -> str:
    """What a field accepts, in words: 'an int >= 1', 'a float in [0, 1]', 'null or a float > 0', ..."""
    meta, kind = field.metadata, type_name(field.type)
    if meta["choices"] is not None:
        words = f"one of {', '.join(map(str, meta['choices']))}"
    elif meta["low"] is not None and meta["high"] is not None:
        words = f"{kind} in [{meta['low']}, {meta['high']}]"
    else:
        bounds = [f">= {meta['low']}" if meta["low"] is not None else None,
                  f"> {meta['above']}" if meta["above"] is not None else None,
                  f"<= {meta['high']}" if meta["high"] is not None else None]
        words = " ".join([kind, " and ".join(bound for bound in bounds if bound)]).strip()
    return f"null or {words}" if optional(field.type) else words


def optional(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def type_name(annotation) -> str:
    base = next(arg for arg in typing.get_args(annotation) if arg is not type(None)) if optional(annotation) else annotation
    if dataclasses.is_dataclass(base):
        return "a group of settings"
    return {int: "an int", float: "a float", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        typing.get_origin(base) or base, str(base))


def in_range(value, field: dataclasses.Field) -> bool:
    meta = field.metadata
    if value is None:
        return optional(field.type)
    if meta["choices"] is not None:
        return value in meta["choices"]
    return ((meta["low"] is None or value >= meta["low"]) and (meta["high"] is None or value <= meta["high"])
            and (meta["above"] is None or value > meta["above"]))


def range_error(settings, prefix: str) -> str | None:
    """The first field of the dataclass instance `settings` (or of its nested groups) out of range, as one line."""
    for field in dataclasses.fields(settings):
        value, key = getattr(settings, field.name), f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(value):
            error = range_error(value, key)
            if error:
                return error
        elif field.metadata and not in_range(value, field):
            return f"{key}={value} is out of range: {field.metadata['doc']} must be {allowed(field)}."
    return None


def schema_field(schema, dotted_key: str) -> dataclasses.Field | None:
    """The field of `schema` at `dotted_key` (nested groups by dots), or None."""
    head, _, rest = dotted_key.partition(".")
    field = {f.name: f for f in dataclasses.fields(schema)}.get(head)
    if field is None or not rest:
        return field
    return schema_field(field.type, rest) if dataclasses.is_dataclass(field.type) else None


# Settings renamed so that one concept has one name: {old dotted key: new dotted key}.
RENAMED = {"train.critic_tau": "train.tau", "train.target_ema_rate": "train.tau", "train.val_freq": "train.eval_interval"}


def check_group(cfg, group: str, schema) -> None:
    """Validate cfg[group] (resolved) against `schema`; a ConfigError of one line names the first problem."""
    for old, new in RENAMED.items():
        if old.startswith(f"{group}.") and OmegaConf.select(cfg, old) is not None:
            raise ConfigError(f"{old} is now {new} (one name for one setting): set {new}={OmegaConf.select(cfg, old)}.")
    values = OmegaConf.to_container(cfg[group], resolve=True)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), values)
        settings = OmegaConf.to_object(typed)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{group}.{error.full_key} is missing: set it in the config or on the command line "
                          f"({group}.{error.full_key}=...); see docs/SETTINGS.md.") from None
    except ConfigKeyError as error:
        key = f"{group}.{error.full_key}" if error.full_key else group
        names = ", ".join(f.name for f in dataclasses.fields(schema))
        raise ConfigError(f"{key} is not a setting here ({schema.__name__}: {names}); see docs/SETTINGS.md.") from None
    except ValidationError as error:
        field = schema_field(schema, str(error.full_key))
        value = OmegaConf.select(OmegaConf.create(values), str(error.full_key))
        wanted = f"{field.metadata['doc']} must be {allowed(field)}" if field is not None else str(error).splitlines()[0]
        raise ConfigError(f"{group}.{error.full_key}={value!r} has the wrong type: {wanted}.") from None
    error = range_error(settings, group)
    if error:
        raise ConfigError(error)
