"""Frozen settings dataclasses and the one way all of them are checked.

Every configuration in mocolab (pretraining `Config`, fine-tuning
`TransferConfig`, evaluation `EvalConfig`, the notebooks' settings) is a
frozen dataclass whose `__post_init__` calls `check_fields`: a value of the
wrong type fails at once with `ConfigError`, naming the field. `build` makes
one from defaults and overrides, where an override of None keeps the default
(so a notebook parameter can say "the preset's value") and an unknown key is
refused with the closest known name.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import types
import typing
from typing import Literal


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or inconsistent; the message names the fix."""


def need(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ok: a config check, its message naming the fix."""
    if not ok:
        raise ConfigError(message)


def check_fields(obj) -> None:
    """Check (and gently coerce) every field of a frozen dataclass against its annotation.

    Coercions, so that papermill and command-line values work: an int where a
    float is expected, a path where a str is, a comma-separated string (or a
    list) where a tuple is. Anything else of the wrong type raises ConfigError.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = _coerce(f.name, getattr(obj, f.name), hints[f.name])
        object.__setattr__(obj, f.name, value)


def build(cls, base: dict, overrides: dict):
    """cls(**base) with `overrides` applied; None keeps base's value; unknown keys are refused."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(base)
    for key, value in overrides.items():
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            label = getattr(cls, "label", cls.__name__)
            raise ConfigError(f"unknown {label} key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if value is not None:
            values[key] = value
    return cls(**values)


def from_dict(cls, values: dict):
    """Rebuild a settings object saved with `dataclasses.asdict` (config.json, a checkpoint)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"the saved {cls.__name__} has keys this mocolab does not know: {unknown}; it was "
            f"written by another version of mocolab"
        )
    return cls(**values)


def parse_value(text: str):
    """A value typed as text (a command-line key=value, a notebook's -p NAME VALUE): numbers, True/False,
    None, quoted strings, lists and tuples as Python literals; anything else (a bare word, a path) as the
    string itself. The one parser of typed values; `format_value` is its inverse."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def format_value(value) -> str:
    """value as text that parse_value reads back to an equal value: a string bare unless it would read as
    another type ("1", "True", "None"), everything else as its Python literal."""
    if isinstance(value, str) and not _is_literal(value):
        return value
    return repr(value)


def _is_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
        return True
    except (ValueError, SyntaxError):
        return False


def parse_override(text: str) -> tuple[str, object]:
    """A command-line `key=value` as (key, parse_value(value))."""
    if "=" not in text:
        raise SystemExit(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    return key, parse_value(value)


# ----------------------------------------------------------------------------
# One value against one annotation
# ----------------------------------------------------------------------------


def _coerce(name: str, value, kind, text: bool = False):
    """value checked against kind; text=True: it came from a comma-separated string, so "3" may be 3."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}={value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(name, value, option, text)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}={value!r} fits none of {kind}")
    if origin is tuple:
        if isinstance(value, str):
            value, text = [v.strip() for v in value.split(",") if v.strip()], True
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{name} must be a tuple (or a comma-separated string), got {value!r}")
        element = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        if element is not None:
            return tuple(_coerce(f"{name}[{i}]", v, element, text) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{name} must have {len(args)} values, got {value!r}")
        return (
            tuple(_coerce(f"{name}[{i}]", v, a, text) for i, (v, a) in enumerate(zip(value, args)))
            if args
            else tuple(value)
        )
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if text and kind in (int, float) and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}") from None
    if kind is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    check = origin or kind
    if not isinstance(value, check) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__} {value!r}")
    return value
