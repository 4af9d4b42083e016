"""Plumbing for nested frozen dataclass configs: `--set a.b=value` overrides and JSON round trips.

Overrides are parsed with `ast.literal_eval` (a bare word is a string) and checked against the field's
type annotation before anything runs; unknown keys are rejected with the closest known names.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import types
import typing
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Config = TypeVar("Config", bound="DataclassInstance")


class ConfigError(ValueError):
    """A bad override or config file, reported before any work starts."""


def is_whole(value: object) -> bool:
    """An int read from JSON (not a bool, which JSON's true would give)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or float read from JSON (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(config: DataclassInstance, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return value converted to the annotation (int -> float, list -> tuple) or raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(annotation)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected None")
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if is_whole(value):
            return value
    elif annotation is float:
        if is_number(value):
            return float(value)
        if isinstance(value, str) and value.lower().lstrip("+-") in ("inf", "infinity"):
            return float(value)  # --set optim.grad_clip=inf (literal_eval reads no inf)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        args = typing.get_args(annotation)
        if isinstance(value, list | tuple):
            item_type = args[0] if args else Any
            return tuple(_check_type(v, item_type, key) for v in value)
    elif origin is dict:
        key_type, value_type = typing.get_args(annotation) or (Any, Any)
        if isinstance(value, dict):
            return {_check_type(k, key_type, key): _check_type(v, value_type, key) for k, v in value.items()}
    elif origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, list | tuple):
            return [_check_type(v, item_type, key) for v in value]
    elif isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (tuple, list, dict) and isinstance(value, str):  # sample_prompts=a cat: the form it takes
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(annotation)}; {_written_as(key, value, origin)}")
    raise ConfigError(f"{key}: {value!r} is not a {_type_name(annotation)}")


def _written_as(key: str, value: str, origin: Any) -> str:
    """How to write a list or dict `value` given as a bare word, quoted for a shell, which strips the quotes of
    a Python list typed bare (['32x32','64x32'] arrives as [32x32,64x32], a string): JSON in single quotes."""
    parts = [part.strip() for part in value.split(",")]
    if origin is dict:
        pairs = [part.partition(":") for part in parts]
        if all(sep and name.strip() for name, sep, _ in pairs):  # alt:0.5,dense:0.5
            shown = ", ".join(f"{json.dumps(k.strip())}: {json.dumps(parse_value(v.strip()))}" for k, _, v in pairs)
        else:
            shown = f'"name": {json.dumps(value)}'
        return f"write a dict, quoted for the shell: --set '{key}={{{shown}}}'"
    return f"write a list, quoted for the shell: --set '{key}=[{', '.join(json.dumps(part) for part in parts)}]'"


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string


def set_value(config: Config, key: str, value: Any, _prefix: str = "") -> Config:
    """A copy of `config` with the dotted `key` replaced (type-checked)."""
    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(config)}
    full = _prefix + key
    if head not in names:
        known = [_prefix + k for k in _all_keys(config)]
        raise ConfigError(f"unknown config key {full!r}{suggest_key(full, known)}")
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current) or isinstance(current, type):
            raise ConfigError(f"unknown config key {full!r}: {_prefix}{head} has no fields")
        inner = set_value(current, rest, value, f"{_prefix}{head}.")
        try:
            return dataclasses.replace(config, **{head: inner})
        except (ValueError, TypeError) as error:  # a check of this level across its fields
            raise _Refused(f"{full}={value!r}: {error}") from error
    key = full
    if dataclasses.is_dataclass(current):
        raise ConfigError(
            f"{key} is a group of settings; set one of its fields, e.g. {key}.{dataclasses.fields(current)[0].name}"
        )
    hint = _hints(type(config))[head]
    checked = _check_type(_command_line_bool(value) if hint is bool else value, hint, key)
    try:
        return dataclasses.replace(config, **{head: checked})
    except (ValueError, TypeError) as error:  # the dataclass's own validation
        raise _Refused(f"{key}={value!r}: {error}") from error


def _command_line_bool(value: Any) -> Any:
    """--set compile=true: the spellings people type on a command line, for a boolean field (files stay strict)."""
    words = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
    if isinstance(value, str) and value.lower() in words:
        return words[value.lower()]
    if is_whole(value) and value in (0, 1):
        return bool(value)
    return value


def _one_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} is given twice in one object (JSON would keep the last): keep one")
        found[key] = value
    return found


def strict_json(text: str) -> Any:
    """json.loads refusing a key given twice in an object (ValueError): a hand-written config with
    {"num_heads": 3, ..., "num_heads": 4} took the last without a word."""
    return json.loads(text, object_pairs_hook=_one_of_each)


def suggest_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"


class _Refused(ConfigError):
    """A value the config's own validation refused, which may pass once other overrides are in."""


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `a.b=value` strings; every one is checked before the result is returned.

    A key set twice takes its last value. The result does not depend on the order of the overrides: one
    the config refuses only in combination with another (model.learn_sigma=false while the objective is
    still iddpm, before diffusion.objective=flow) is tried again once the others are in, and those that
    pass only together (model.hidden_size with model.num_heads) are set together.
    """
    if isinstance(overrides, (str, dict)):  # a str was read one character at a time ("override 's' must...")
        example = "['steps=5']" if isinstance(overrides, str) else "[f'{key}={value}' for key, value in d.items()]"
        raise ConfigError(
            f"overrides are a list of 'key=value' strings, e.g. {example}; got a {type(overrides).__name__}"
        )
    latest: dict[str, object] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, text = key.strip(), text.strip()
        try:  # bytes that are not UTF-8 arrive as lone surrogates: they were told as a list to write differently
            item.encode("utf-8")
        except UnicodeEncodeError:
            shown = item.encode("utf-8", "backslashreplace").decode()
            raise ConfigError(f"override {shown!r} is not UTF-8 text: write it in UTF-8") from None
        try:
            value = parse_value(text)
        except (MemoryError, RecursionError):  # the literal parser on a 100,000-deep expression
            raise ConfigError(f"{key}: its value ({len(text):,} characters) is too deeply nested to read") from None
        # A text field takes what parses as another type as typed: data.root=2024 names a folder, not 2024.
        latest[key] = text if _leaf_hint(config, key) is str and not isinstance(value, str) else value
    pending = list(latest.items())
    while pending:
        refused = []
        for key, value in pending:
            try:
                config = set_value(config, key, value)
            except _Refused as error:
                refused.append((key, value, error))
        if len(refused) == len(pending):  # none passes alone: maybe they pass together
            return _set_together(config, [(key, value) for key, value, _ in refused])
        pending = [(key, value) for key, value, _ in refused]
    return config


def _leaf_hint(config: Config, key: str) -> Any:
    """The annotation of the dotted `key`'s field, or None where the key names no field."""
    cls: Any = type(config)
    for name in key.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or name not in _hints(cls):
            return None
        cls = _hints(cls)[name]
    return cls


def _set_together(config: Config, pending: list[tuple[str, Any]]) -> Config:
    """`config` with every (key, value) set at once, checked once: model.hidden_size=160 with
    model.num_heads=5 over 96 and 3, where each alone breaks the divisibility check with the other's old
    value. Every key was type-checked by set_value already."""
    data = to_dict(config)
    for key, value in pending:
        node, cls = data, type(config)
        *path, leaf = key.split(".")
        for name in path:
            node, cls = node[name], _hints(cls)[name]
        node[leaf] = _command_line_bool(value) if _hints(cls)[leaf] is bool else value
    try:
        return from_dict(type(config), data)
    except (ValueError, TypeError) as error:  # the combination itself is refused: say what was asked
        asked = " ".join(f"{key}={value!r}" for key, value in pending)
        raise ConfigError(f"{asked}: {error}") from error


def to_dict(config: DataclassInstance) -> dict:
    return dataclasses.asdict(config)


def to_json(config: DataclassInstance) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False) + "\n"


def from_dict(cls: type[Config], data: dict, prefix: str = "") -> Config:
    """Build `cls` from a dict (nested dataclasses from nested dicts), rejecting unknown keys."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        suggestion = suggest_key(unknown[0], sorted(names))
        raise ConfigError(f"unknown config keys {[prefix + u for u in unknown]}{suggestion}")
    values = {name: _check_type(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**values)


def diff(old: DataclassInstance, new: DataclassInstance, prefix: str = "") -> list[str]:
    """Human-readable differences between two configs of the same class."""
    changes = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(a) and not isinstance(a, type):
            changes += diff(a, b, f"{prefix}{f.name}.")
        elif a != b:
            changes.append(f"{prefix}{f.name}: {a!r} -> {b!r}")
    return changes
