"""Recipes: named, diffable YAML files whose sections become the stages' config dataclasses.

Loading is strict on purpose: an unknown key or a value of the wrong type fails before any work
starts, naming the file and the key (``recipes/tiny.yaml: sft.lerning_rate: unknown key``),
because a silently ignored typo in a training config costs a whole run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe that cannot be used as written."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error: PyYAML
    keeps the last value without a word, so ``max_steps: 3`` above a forgotten
    ``max_steps: 5000`` trains for 5000 steps."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor`` merges on purpose; its keys may be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the safe loader's own error names it
            if line != key_node.start_mark.line + 1:
                raise RepeatedKeyError(key, line, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class RepeatedKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe's sections; raises ``RecipeError`` naming the file for anything that keeps
    it from being read as one (missing, a folder, not UTF-8, not YAML, a repeated key)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a directory, not a recipe file") from None
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start})"
        ) from None
    except OSError as error:
        raise RecipeError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        loaded = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except RepeatedKeyError as error:
        raise RecipeError(
            f"{path}: line {error.again}: key {error.key!r} appears again in the same mapping "
            f"(first on line {error.first}); YAML would silently keep only the last value"
        ) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(loaded, dict):
        raise RecipeError(f"{path}: expected a mapping of stage sections")
    return loaded


def build(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """``cls(**values)`` with every key and type checked; ``where`` prefixes error messages."""
    kwargs = check_section(cls, values, where)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"{where}: {error}") from None


def check_section(cls: type, values: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """The keyword arguments of ``cls`` from ``values``, every key and type checked, without
    constructing ``cls`` (whose own checks may need settings the recipe leaves to a launcher).
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise RecipeError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise RecipeError(f"{where}.{key}: unknown key; expected one of {sorted(fields)}")
        kwargs[key] = coerce(value, hints[key], f"{where}.{key}")
    return kwargs


def coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
        inner = args[1] if len(args) == 2 else Any
        return {k: coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise RecipeError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise RecipeError(f"{where}: expected {hint.__name__}, got bool {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise RecipeError(
            f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value
