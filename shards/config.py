"""Reading YAML recipes into typed configs: one loader and one error for every command.

``eoforge ingest``, ``pretrain``, ``compare`` (and the eval recipes) read a YAML file whose
settings sit at the top level or under one section name (``ingest:``, ``compare:``), check the
keys against their dataclass and report a bad file as :class:`ConfigError`, naming the file
and the key.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the file (or option) and the key."""


def read_recipe(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """The settings mapping of a YAML recipe (``{}`` for an empty file).

    Args:
        path: the YAML file.
        section: when the file's top level has this key, its mapping is returned instead
            (``ingest: {...}``), so one file can hold several commands' settings.

    Raises:
        ConfigError: unreadable file, invalid YAML, or not a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if section is not None and section in data:
        data = data[section]
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: {section}: expected a mapping of settings, got {type(data).__name__}")
    return dict(data)


def check_keys(values: Mapping[str, Any], known: Collection[str], source: str, section: str) -> None:
    """Raise :class:`ConfigError` naming ``source`` and every ``section.key`` of ``values`` not in ``known``."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        keys = ", ".join(f"{section}.{k}" for k in unknown)
        raise ConfigError(f"{source}: unknown key {keys} (known {section} keys: {sorted(known)})")


def build_section(cls: type, values: Mapping[str, Any] | None, source: str, section: str) -> Any:
    """Construct dataclass ``cls`` from ``values`` (YAML lists become the tuples the fields
    declare), naming ``source`` and ``section.key`` on errors.

    Raises:
        ConfigError: unknown keys, or a value the dataclass refuses (its message kept).
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(values, fields, source, section)
    hints = _field_types(cls)
    kwargs = {k: _coerce(v, hints.get(k)) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: section {section}: {err}") from err


def section_to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML-able values (tuples -> lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to no conversion
        return {}


def _coerce(value: Any, hint: Any) -> Any:
    """YAML gives lists where dataclasses want tuples; convert along the annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            if typing.get_origin(arg) is tuple or arg is tuple or arg is float:
                return _coerce(value, arg)
        return value
    if (origin is tuple or hint is tuple) and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; a float field means the number
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_callable(spec: str, setting: str) -> Callable[..., Any]:
    """The function a setting names: ``module:function`` (importable) or ``path/to/file.py:function``.

    Settings that plug user code in (ingest's ``href_signer``, pretraining's
    ``engine.step_callbacks``) name functions this way, so they survive YAML and the processes
    a run starts.

    Raises:
        ConfigError: naming ``setting``, for a malformed spec, a file that cannot be loaded or
            no such function.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{setting} {spec!r}: expected module:function or path/to/file.py:function")
    if module_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
        if loader is None or loader.loader is None or not Path(module_name).is_file():
            raise ConfigError(f"{setting} {spec!r}: cannot load {module_name}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"{setting} {spec!r}: cannot import {module_name}: {err}") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{setting} {spec!r}: {module_name} has no function {attr}")
    return fn


__all__ = ["ConfigError", "build_section", "check_keys", "load_callable", "read_recipe", "section_to_dict"]

