"""Settings declared with their type, allowed range and a one-line doc, checked before anything is built.

A config group's schema is a dataclass of `setting(...)` fields (env/settings.py, agent/finetune/settings.py and
each algorithm's agent); `check_group` validates the composed group against it: an unknown key, a value of the
wrong type or one out of range stops the run with one line naming the key, the value and what is allowed.
A group that builds an object (`_target_`: the policy, its network, critics, the noise actor, a dataset) has its
constructor's signature as schema (`check_targets`): a key it does not take, or a value not of the parameter's
annotated type, is refused the same way; ranges a constructor needs it checks itself, with one line.
The YAML files in cfg/ give the values; `python script/settings_reference.py` writes docs/SETTINGS.md from the
schemas.
"""

import collections.abc
import dataclasses
import inspect
import types
import typing

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
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


def out_of_range(key: str, value, field: dataclasses.Field) -> str:
    """The one line of a value outside its field's range."""
    return f"{key}={value} is out of range: {field.metadata['doc']} must be {allowed(field)}."


def range_error(settings, prefix: str) -> str | None:
    """The first field of the dataclass instance `settings` (or of its nested groups) out of range, as one line."""
    for field in dataclasses.fields(settings):
        value, key = getattr(settings, field.name), f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(value):
            error = range_error(value, key)
            if error:
                return error
        elif field.metadata and not in_range(value, field):
            return out_of_range(key, value, field)
    return None


def schema_field(schema, dotted_key: str) -> dataclasses.Field | None:
    """The field of `schema` at `dotted_key` (nested groups by dots), or None."""
    head, _, rest = dotted_key.partition(".")
    field = {f.name: f for f in dataclasses.fields(schema)}.get(head)
    if field is None or not rest:
        return field
    return schema_field(field.type, rest) if dataclasses.is_dataclass(field.type) else None


# Settings renamed so that one concept has one name: {old dotted key: new dotted key}.
RENAMED = {"train.critic_tau": "train.tau", "train.target_ema_rate": "train.tau", "train.val_freq": "train.eval_interval",
           "model.reward_horizon": "model.act_steps"}


def check_renamed(cfg) -> None:
    """A key of RENAMED anywhere in cfg stops the run with one line naming its new name."""
    for old, new in RENAMED.items():
        if OmegaConf.select(cfg, old) is not None:
            raise ConfigError(f"{old} is now {new} (one name for one setting): set {new}={OmegaConf.select(cfg, old)}.")


def check_group(cfg, group: str, schema) -> None:
    """Validate cfg[group] (resolved) against `schema`; a ConfigError of one line names the first problem."""
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


HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def check_targets(cfg: DictConfig) -> None:
    """Every node below the root with a `_target_`: each key must be a parameter of the target's constructor, and
    its value (resolved) of the parameter's annotated type; a ConfigError of one line names the first that is not.
    The root (the agent, which reads the whole config) is checked by `check_group`'s schemas instead."""
    for path, node in target_nodes(cfg):
        target = node["_target_"]
        parameters, hints, takes_any_key = constructor_parameters(get_object(target))
        values = OmegaConf.to_container(node, resolve=True)
        name = target.rsplit(".", 1)[-1]
        for key, value in values.items():
            if key in HYDRA_KEYS:
                continue
            if key not in parameters:
                if takes_any_key:
                    continue
                settings = ", ".join(parameters)
                raise ConfigError(f"{path}.{key} is not a setting of {name} ({target}): its settings are {settings}.")
            annotation = hints.get(key, inspect.Parameter.empty)
            if not matches(value, annotation):
                raise ConfigError(f"{path}.{key}={value!r} has the wrong type: {name} takes "
                                  f"{annotation_words(annotation)} there.")


def target_nodes(cfg: DictConfig, path: str = "") -> typing.Iterator[tuple[str, DictConfig]]:
    """(dotted path, node) of every dict node with a `_target_` below cfg (cfg itself excluded), outermost first."""
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            child_path = f"{path}.{key}" if path else str(key)
            if "_target_" in child:
                yield child_path, child
            yield from target_nodes(child, child_path)


def constructor_parameters(target) -> tuple[dict, dict, bool]:
    """The named parameters a class's constructor takes (or a function's), with their annotations, and whether it
    takes any other key. A class whose __init__ passes **kwargs on takes its base classes' parameters too (the
    MRO is followed while each __init__ has **kwargs)."""
    parameters, hints = {}, {}
    classes = target.__mro__ if inspect.isclass(target) else [target]
    for owner in classes:
        function = owner.__init__ if inspect.isclass(target) else owner
        if inspect.isclass(target) and "__init__" not in vars(owner):
            continue
        if function is object.__init__:
            return parameters, hints, False
        named = {name: p for name, p in inspect.signature(function).parameters.items()
                 if name != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
        parameters = {**named, **parameters}
        hints = {**type_hints(function), **hints}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values()):
            return parameters, hints, False
    return parameters, hints, True


def type_hints(function) -> dict:
    """The resolved annotations of a function's parameters."""
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError):  # an annotation that names what the module does not import at run time
        return {}


def matches(value, annotation) -> bool:
    """Whether a resolved config value fits a parameter's annotation; annotations other than None, bool, int,
    float, str, sequences and mappings of them (a module, a tensor, a callable) are not checked."""
    if annotation in (inspect.Parameter.empty, typing.Any):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if (origin or annotation) in (list, tuple, collections.abc.Sequence):
        items = [arg for arg in args if arg is not Ellipsis]
        return isinstance(value, (list, tuple)) and (not items or all(  # tuple[int, float]: one type per position
            matches(item, items[min(i, len(items) - 1)]) for i, item in enumerate(value)))
    if (origin or annotation) in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True


def annotation_words(annotation) -> str:
    """An annotation in words: 'an int', 'a list of ints', 'null or a float', ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        words = [annotation_words(arg) for arg in args if arg is not type(None)]
        return " or ".join((["null"] if type(None) in args else []) + words)
    if (origin or annotation) in (list, tuple, collections.abc.Sequence):
        items = [arg for arg in args if arg is not Ellipsis]
        return f"a list of {annotation_words(items[0]).split(' ', 1)[-1]}s" if items else "a list"
    return type_name(annotation)


def check_present(cfg: DictConfig, schema) -> None:
    """Validate the keys of `schema` that cfg's top level holds (a run's config holds some of them: a pre-training
    config has no act_steps): each value of its field's type and in its range, else a ConfigError of one line."""
    for field in dataclasses.fields(schema):
        if field.name not in cfg:
            continue
        value = OmegaConf.select(cfg, field.name, throw_on_missing=True)
        if not matches(value, field.type):
            raise ConfigError(f"{field.name}={value!r} has the wrong type: {field.metadata['doc']} must be "
                              f"{allowed(field)}.")
        if not in_range(value, field):
            raise ConfigError(out_of_range(field.name, value, field))
