"""The one cattrs converter for the configuration file, and its error report.

Strict where TOML is loose: ``"80"`` is not a port, ``"false"`` is not a bool, and a
float is not an int; unknown keys are errors. Lists accept a single scalar, and a list
of keywords also accepts v2ray's comma form (``network = "tcp,udp"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args, get_origin

import cattrs
from cattrs.errors import ForbiddenExtraKeysError

from . import schema
from .errors import BadValue, ConfigError
from .values import Duration, HostPort, PortRanges, check_domain_entry, check_ip_entry, parse_ip

_TYPE_NAMES = {int: "an integer", bool: "true or false", str: "a string", float: "a number"}


def _strict(kind: type) -> Callable[[Any, type], Any]:
    def structure(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise BadValue(f"expected {_TYPE_NAMES[kind]}, got {value!r}")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise BadValue(f"expected {_TYPE_NAMES[kind]}, got {value!r}")
        return value

    return structure


def _text(check: Callable[[str], object]) -> Callable[[Any, type], str]:
    def structure(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise BadValue(f"expected a string, got {value!r}")
        check(value)
        return value

    return structure


def _ranged(low: int, high: int, what: str) -> Callable[[Any, type], int]:
    strict_int = _strict(int)

    def structure(value: Any, _: type) -> int:
        number: int = strict_int(value, int)
        if not low <= number <= high:
            raise BadValue(f"{what} {number} out of range {low}-{high}")
        return number

    return structure


def _check_tag(value: str) -> None:
    if not value.strip():
        raise BadValue("tags must not be empty")


def _is_tuple_of(cl: Any) -> bool:
    return get_origin(cl) is tuple and len(get_args(cl)) == 2 and get_args(cl)[1] is Ellipsis


def _tuple_hook_factory(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, type], Any]]:
    def factory(cl: Any) -> Callable[[Any, type], Any]:
        elem = get_args(cl)[0]
        keywords = get_origin(elem) is Literal
        list_type = list[elem]  # type: ignore[valid-type]

        def structure(value: Any, _: type) -> tuple[Any, ...]:
            if isinstance(value, str) and keywords:
                value = [part.strip() for part in value.split(",")]
            elif not isinstance(value, list | tuple):
                value = [value]
            return tuple(conv.structure(value, list_type))

        return structure

    return factory


def _is_literal(cl: Any) -> bool:
    return get_origin(cl) is Literal


def _literal_hook(value: Any, cl: Any) -> Any:
    allowed = get_args(cl)
    if value in allowed and type(value) is type(allowed[0]):
        return value
    choices = " | ".join(str(a) for a in allowed)
    raise BadValue(f"expected one of {choices}, got {value!r}")


def _union_hook(
    conv: cattrs.Converter, kinds: tuple[type, ...], what: str
) -> Callable[[Any, type], Any]:
    by_type = {k.TYPE: k for k in kinds}  # type: ignore[attr-defined]

    def structure(value: Any, _: type) -> Any:
        if not isinstance(value, Mapping):
            raise BadValue(f"expected a table for the {what}")
        kind = value.get("type")
        if kind not in by_type:
            choices = " | ".join(by_type)
            raise BadValue(f"unknown {what} type {kind!r}: expected one of {choices}")
        fields = {k: v for k, v in value.items() if k != "type"}
        return conv.structure(fields, by_type[kind])

    return structure


def _workers(value: Any, _: type) -> int | str:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 256:
        return value
    raise BadValue(f'workers must be "auto" or a number 1-256, got {value!r}')


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    for kind in (int, bool, str, float):
        conv.register_structure_hook(kind, _strict(kind))
    conv.register_structure_hook(Duration, lambda v, _: Duration.parse(v))
    conv.register_structure_hook(PortRanges, lambda v, _: PortRanges.parse(v))
    conv.register_structure_hook(HostPort, lambda v, _: HostPort.parse(v))
    conv.register_structure_hook(schema.DomainEntry, _text(check_domain_entry))
    conv.register_structure_hook(schema.IpEntry, _text(check_ip_entry))
    conv.register_structure_hook(schema.IpAddressText, _text(parse_ip))
    conv.register_structure_hook(schema.Tag, _text(_check_tag))
    conv.register_structure_hook(schema.Port, _ranged(1, 65535, "port"))
    conv.register_structure_hook(schema.Mark, _ranged(0, 0xFFFFFFFF, "mark"))
    conv.register_structure_hook_func(_is_literal, _literal_hook)
    conv.register_structure_hook_factory(_is_tuple_of, _tuple_hook_factory(conv))
    conv.register_structure_hook(schema.Inbound, _union_hook(conv, schema.INBOUND_TYPES, "inbound"))
    conv.register_structure_hook(schema.WorkerCount, _workers)
    conv.register_structure_hook(
        schema.Outbound, _union_hook(conv, schema.OUTBOUND_TYPES, "outbound")
    )
    return conv


CONVERTER = make_converter()


def _format(exc: BaseException, cl: type | None) -> str:
    if isinstance(exc, BadValue):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        return "\0" + ",".join(sorted(exc.extra_fields))
    if isinstance(exc, KeyError):
        return "required key missing"
    return cattrs.v.format_exception(exc, cl)


def structure_errors(exc: BaseException) -> list[ConfigError]:
    """Turn cattrs' exception tree into ``ConfigError``s, one per unknown key."""
    errors = []
    for line in cattrs.transform_error(exc, path="$", format_exception=_format):
        message, _, path = line.rpartition(" @ ")
        if message.startswith("\0"):
            for key in message[1:].split(","):
                errors.append(ConfigError(f"unknown key {key!r}", f"{path}.{key}"))
        else:
            errors.append(ConfigError(message, path))
    return errors


def structure_config(raw: Mapping[str, Any]) -> schema.Config:
    return CONVERTER.structure(raw, schema.Config)


__all__ = ["CONVERTER", "structure_config", "structure_errors"]
