"""Field mappings, Segment Actions style: a JSON spec of raw values and directives (`@path`,
`@template`, `@literal`, `@if`, `@arrayPath`), checked and compiled once into a function from
an event to a destination's payload. The function never raises on an odd event. Undefined
values (a path leading nowhere, an `@if` with no branch to take) drop their key; `null` is
kept. The output is a fresh tree of dicts and lists, sharing nothing with event or spec."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["Mapper", "MappingError", "compile_mapping"]

Mapper = Callable[[Mapping[str, Any]], dict[str, Any]]
_Eval = Callable[[Any], Any]  # the current root (the event, or an @arrayPath item) -> value
_Step = str | int


class _Undefined:
    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


class MappingError(ValueError):
    """A spec that cannot compile; the message starts with the place in the spec."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"at {location}: {reason}")
        self.location = location
        self.reason = reason


def compile_mapping(spec: Mapping[str, Any]) -> Mapper:
    if not isinstance(spec, Mapping):
        raise MappingError("$", f"a mapping must be an object, got {_kind(spec)}")
    evaluate = _compile(spec, "$")

    def mapper(event: Mapping[str, Any]) -> dict[str, Any]:
        result = _plain(evaluate(event))
        return result if isinstance(result, dict) else {}

    return mapper


def _compile(node: Any, loc: str) -> _Eval:
    if isinstance(node, list | tuple):
        elements = [_compile(value, _child(loc, i)) for i, value in enumerate(node)]
        return lambda root: [_null_if_undefined(element(root)) for element in elements]
    if not isinstance(node, Mapping):
        _check_json(node, loc)
        return lambda root: node
    _check_keys(node, loc)
    directives = [key for key in node if key.startswith("@")]
    if not directives:
        fields = [(key, _compile(value, _child(loc, key))) for key, value in node.items()]
        return lambda root: {k: v for k, field in fields if (v := field(root)) is not UNDEFINED}
    if len(directives) > 1:
        raise MappingError(loc, f"one directive per object, got {', '.join(directives)}")
    name = directives[0]
    if len(node) > 1:
        raise MappingError(loc, f"{name} must be the only key in its object, not beside others")
    if name not in _DIRECTIVES:
        raise MappingError(loc, f"unknown directive {name} (known: {', '.join(_DIRECTIVES)})")
    return _DIRECTIVES[name](node[name], loc)  # its argument's parts are located under `loc.@name`


def _path_directive(arg: Any, loc: str) -> _Eval:
    return _path_getter(arg, loc, "@path")


def _literal_directive(arg: Any, loc: str) -> _Eval:
    _check_json(arg, _child(loc, "@literal"))
    return lambda root: arg  # copied on the way out, so the spec stays untouched


_PLACEHOLDER = re.compile(r"\{\{\{([^{}]*)\}\}\}|\{\{([^{}]*)\}\}")


def _template_directive(arg: Any, loc: str) -> _Eval:
    if not isinstance(arg, str):
        raise MappingError(loc, f'@template needs a string like "Hi {{{{traits.name}}}}", got {_kind(arg)}')
    parts: list[str | tuple[_Step, ...]] = []
    at = 0
    for match in _PLACEHOLDER.finditer(arg):
        path = (match.group(1) if match.group(1) is not None else match.group(2)).strip()
        try:
            steps = _parse_steps(path if path.startswith("[") else "." + path)
        except ValueError as error:
            raise MappingError(loc, f"bad placeholder {match.group(0)!r}: {error}") from None
        parts += [arg[at : match.start()], steps]
        at = match.end()
    parts.append(arg[at:])
    return lambda root: "".join(p if isinstance(p, str) else _render(_get(root, p)) for p in parts)


_IF_KEYS = ("exists", "blank", "then", "else")


def _if_directive(arg: Any, loc: str) -> _Eval:
    if not isinstance(arg, Mapping):
        raise MappingError(loc, f'@if needs an object {{"exists" or "blank", "then"}}, not {_kind(arg)}')
    unknown = [key for key in arg if key not in _IF_KEYS]
    if unknown:
        raise MappingError(loc, f"@if has unknown key {unknown[0]!r} (allowed: {', '.join(_IF_KEYS)})")
    tests = [key for key in ("exists", "blank") if key in arg]
    if len(tests) != 1:
        raise MappingError(loc, '@if needs exactly one of "exists" or "blank"')
    if "then" not in arg:
        raise MappingError(loc, '@if needs a "then" value')
    blank, inner = tests[0] == "blank", _child(loc, "@if")
    condition = _compile(arg[tests[0]], _child(inner, tests[0]))
    then = _compile(arg["then"], _child(inner, "then"))
    otherwise = _compile(arg["else"], _child(inner, "else")) if "else" in arg else None

    def evaluate(root: Any) -> Any:
        value = condition(root)
        if value is not UNDEFINED and value is not None and not (blank and value == ""):
            return then(root)
        return otherwise(root) if otherwise is not None else UNDEFINED

    return evaluate


def _array_path_directive(arg: Any, loc: str) -> _Eval:
    hint = '@arrayPath needs ["$.path"] or ["$.path", {item mapping}]'
    if not isinstance(arg, list | tuple) or not 1 <= len(arg) <= 2:
        raise MappingError(loc, f"{hint}, got {_kind(arg)}")
    inner = _child(loc, "@arrayPath")
    if isinstance(arg[0], Mapping):
        source = _compile(arg[0], _child(inner, 0))
    else:
        source = _path_getter(arg[0], _child(inner, 0), "@arrayPath")
    if len(arg) == 2 and not isinstance(arg[1], Mapping):
        raise MappingError(_child(inner, 1), f"{hint}; the item mapping must be an object")
    item = _compile(arg[1], _child(inner, 1)) if len(arg) == 2 and arg[1] else None

    def evaluate(root: Any) -> Any:
        value = source(root)
        if value is UNDEFINED or value is None:
            return value
        items = value if isinstance(value, list | tuple) else [value]
        return list(items) if item is None else [_null_if_undefined(item(each)) for each in items]

    return evaluate


_DIRECTIVES: Final[dict[str, Callable[[Any, str], _Eval]]] = {
    "@path": _path_directive,
    "@template": _template_directive,
    "@literal": _literal_directive,
    "@if": _if_directive,
    "@arrayPath": _array_path_directive,
}

_STEP = re.compile(r"""\.([^.\[\]]+)|\[([0-9]+)\]|\['((?:[^'\\]|\\.)*)'\]|\["((?:[^"\\]|\\.)*)"\]""")
_ESCAPE = re.compile(r"\\(.)")


def _path_getter(arg: Any, loc: str, directive: str) -> _Eval:
    if not isinstance(arg, str) or not arg.startswith("$"):
        shown = repr(arg) if isinstance(arg, str) else _kind(arg)
        raise MappingError(loc, f'{directive} needs a string like "$.traits.email", got {shown}')
    try:
        steps = _parse_steps(arg[1:])
    except ValueError as error:
        raise MappingError(loc, f"bad path {arg!r}: {error}") from None
    return lambda root: _get(root, steps)


def _parse_steps(text: str) -> tuple[_Step, ...]:
    """`.key`, `[0]`, `['any key']` or `["any key"]`, repeated; ValueError otherwise."""
    steps: list[_Step] = []
    at = 0
    while at < len(text):
        match = _STEP.match(text, at)
        if match is None:
            raise ValueError(f"expected .key, [index] or ['key'] at {text[at:]!r}")
        key, index, single, double = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(key if key is not None else _ESCAPE.sub(r"\1", single if double is None else double))
        at = match.end()
    return tuple(steps)


def _get(root: Any, steps: tuple[_Step, ...]) -> Any:
    value = root
    for step in steps:
        if isinstance(step, str) and isinstance(value, Mapping):
            value = value.get(step, UNDEFINED)
        elif isinstance(value, list | tuple):
            if isinstance(step, str):  # `.0` indexes an array too, as in Segment's paths
                if not (step.isascii() and step.isdigit()):
                    return UNDEFINED
                step = int(step)
            value = value[step] if step < len(value) else UNDEFINED
        else:
            return UNDEFINED
    return value


def _render(value: Any) -> str:
    """Template text: strings raw, missing and null as "", numbers and booleans as JavaScript
    prints them (3.0 -> "3", True -> "true"), anything else as compact JSON ("" if impossible)."""
    try:
        if value is UNDEFINED or value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str, skipkeys=True)
    except (ValueError, TypeError, RecursionError):
        return ""


def _null_if_undefined(value: Any) -> Any:
    return None if value is UNDEFINED else value


def _plain(value: Any) -> Any:
    """A fresh copy of a JSON-like tree as dicts and lists; iterative, so depth is no limit."""
    if not isinstance(value, Mapping | list | tuple):
        return value
    holder: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(holder, 0, value)]
    while stack:
        parent, slot, source = stack.pop()
        copy: dict[Any, Any] | list[Any] = dict(source) if isinstance(source, Mapping) else list(source)
        parent[slot] = copy
        children = copy.items() if isinstance(copy, dict) else enumerate(copy)
        stack.extend((copy, k, v) for k, v in children if isinstance(v, Mapping | list | tuple))
    return holder[0]


def _check_json(value: Any, loc: str) -> None:
    if isinstance(value, Mapping):
        _check_keys(value, loc)
        for key, child in value.items():
            _check_json(child, _child(loc, key))
    elif isinstance(value, list | tuple):
        for i, child in enumerate(value):
            _check_json(child, _child(loc, i))
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise MappingError(loc, f"not a JSON value: {_kind(value)}")


def _check_keys(node: Mapping[Any, Any], loc: str) -> None:
    for key in node:
        if not isinstance(key, str):
            raise MappingError(loc, f"object keys must be strings, got {key!r}")


_PLAIN_KEY = re.compile(r"[A-Za-z_@$][\w@$-]*")


def _child(loc: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{loc}[{key}]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{loc}.{key}"
    return "{}['{}']".format(loc, key.replace("\\", "\\\\").replace("'", "\\'"))


_KINDS: Final = {bool: "a boolean", int: "a number", float: "a number", str: "a string", type(None): "null"}


def _kind(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return "an object" if isinstance(value, Mapping) else "an array"
    return _KINDS.get(type(value), type(value).__name__)
