"""Destination filters for one source → destination pair, applied in Segment's order: sample,
drop events, drop properties, allow properties — whatever order the rules are written in.

Every rule's `if:` sees the event as it arrived. Sampling is deterministic: a stable hash of
`messageId` (or of the `sample_by:` field, so all of a user's events share one fate). The
input is never mutated; the outcome shares every part of it that no rule changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from headwater.deliver.conditions import Condition, ConditionError, compile_condition

__all__ = ["DestinationFilters", "FilterError", "FilterOutcome", "compile_filters"]

_ACTIONS: Final = ("sample", "drop", "drop_properties", "allow_properties")
_KEYS: Final = frozenset({"if", "sample_by", *_ACTIONS})
_ALLOWABLE: Final = ("properties", "traits")
_MISSING: Final = object()
_HASH_SPACE: Final = 1 << 64

# A path tree: each key leads to a deeper tree, or to None for "this whole value".
_Tree = dict[str, "_Tree | None"]


class FilterError(ValueError):
    """A rule that does not compile; the message starts with `rules[<index>]` naming the rule."""

    def __init__(self, index: int | None, problem: str) -> None:
        super().__init__(f"{'filters' if index is None else f'rules[{index}]'}: {problem}")
        self.index = index
        self.problem = problem


@dataclass(frozen=True)
class FilterOutcome:
    """The event to deliver, or None with `reason` "sampling" or "filter"."""

    event: dict[str, Any] | None
    reason: str | None


@dataclass(frozen=True)
class _Sample:
    when: Condition | None
    threshold: int
    key: tuple[str, ...]

    def keeps(self, event: Mapping[str, Any]) -> bool:
        value = _lookup(event, self.key) if self.key else None
        if value is None or value is _MISSING:
            value = event.get("messageId")
        text = value if isinstance(value, str) else "" if value is None else str(value)
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.threshold


@dataclass(frozen=True)
class _Prune:
    when: Condition | None
    tree: _Tree
    allow: bool


@dataclass(frozen=True)
class DestinationFilters:
    samples: tuple[_Sample, ...] = ()
    drops: tuple[Condition | None, ...] = ()
    prunes: tuple[_Prune, ...] = ()  # every drop_properties rule, then every allow_properties rule

    def apply(self, event: Mapping[str, Any]) -> FilterOutcome:
        for sample in self.samples:
            if _applies(sample.when, event) and not sample.keeps(event):
                return FilterOutcome(None, "sampling")
        for when in self.drops:
            if _applies(when, event):
                return FilterOutcome(None, "filter")
        result: Mapping[str, Any] = event
        for prune in self.prunes:
            if _applies(prune.when, event):
                result = _allow_event(result, prune.tree) if prune.allow else _drop(result, prune.tree)
        return FilterOutcome(result if isinstance(result, dict) else dict(result), None)


def compile_filters(rules: Sequence[Mapping[str, Any]]) -> DestinationFilters:
    """Check and compile a destination's filter rules (dicts from YAML); raises FilterError."""
    if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, Sequence):
        raise FilterError(None, f"must be a list of rules, got {type(rules).__name__}")
    samples: list[_Sample] = []
    drops: list[Condition | None] = []
    removals: list[_Prune] = []
    allowances: list[_Prune] = []
    for index, rule in enumerate(rules):
        action, when = _check_rule(index, rule)
        value = rule[action]
        if action == "sample":
            samples.append(_Sample(when, _threshold(index, value), _sample_key(index, rule.get("sample_by"))))
        elif action == "drop":
            if value is not True:
                raise FilterError(index, f"drop must be true, got {value!r}")
            drops.append(when)
        else:
            allow = action == "allow_properties"
            (allowances if allow else removals).append(_Prune(when, _tree(index, action, value), allow))
    return DestinationFilters(tuple(samples), tuple(drops), (*removals, *allowances))


def _check_rule(index: int, rule: Any) -> tuple[str, Condition | None]:
    if not isinstance(rule, Mapping):
        raise FilterError(index, f"a rule must be a mapping, got {type(rule).__name__}")
    unknown = sorted(str(key) for key in rule if key not in _KEYS)
    if unknown:
        raise FilterError(
            index, f"unknown key {', '.join(unknown)}; a rule has `if` and one of {', '.join(_ACTIONS)}"
        )
    actions = [action for action in _ACTIONS if action in rule]
    if len(actions) != 1:
        found = f"got {' and '.join(actions)}" if actions else "got none"
        raise FilterError(index, f"a rule needs exactly one of {', '.join(_ACTIONS)}; {found}")
    if "sample_by" in rule and actions[0] != "sample":
        raise FilterError(index, "sample_by only goes with sample")
    if "if" not in rule:
        return actions[0], None
    text = rule["if"]
    if not isinstance(text, str):
        raise FilterError(
            index, f"if must be condition text, got {text!r}; leave it out to match every event"
        )
    try:
        return actions[0], compile_condition(text)
    except ConditionError as error:
        raise FilterError(index, f"if: {error}") from None


def _threshold(index: int, percent: Any) -> int:
    if type(percent) not in (int, float) or not 0 <= percent <= 100:
        raise FilterError(index, f"sample must be a percentage from 0 to 100, got {percent!r}")
    return int(percent * _HASH_SPACE / 100)


def _sample_key(index: int, path: Any) -> tuple[str, ...]:
    if path is None:
        return ()
    return _path(index, "sample_by", path)


def _path(index: int, action: str, path: Any) -> tuple[str, ...]:
    segments = tuple(path.split(".")) if isinstance(path, str) else ()
    if not segments or not all(segment.strip() == segment != "" for segment in segments):
        raise FilterError(index, f"{action}: {path!r} is not a field path like properties.email")
    return segments


def _tree(index: int, action: str, paths: Any) -> _Tree:
    if isinstance(paths, str) or not isinstance(paths, Sequence) or not paths:
        raise FilterError(index, f"{action} must be a non-empty list of field paths, got {paths!r}")
    root: _Tree = {}
    for path in paths:
        segments = _path(index, action, path)
        if len(segments) < 2:
            raise FilterError(index, f"{action}: {path!r} names a whole top-level field; name one inside it")
        if action == "allow_properties" and segments[0] not in _ALLOWABLE:
            raise FilterError(index, f"allow_properties: {path!r} is not under {' or '.join(_ALLOWABLE)}")
        node: _Tree | None = root
        for segment in segments[:-1]:
            node = node.setdefault(segment, {}) if node is not None else None
        if node is not None:
            node[segments[-1]] = None
    return root


def _applies(when: Condition | None, event: Mapping[str, Any]) -> bool:
    return when is None or when(event)


def _lookup(value: Any, path: tuple[str, ...]) -> Any:
    for segment in path:
        if not isinstance(value, Mapping):
            return _MISSING
        value = value.get(segment, _MISSING)
    return value


def _drop(value: Any, tree: _Tree) -> Any:
    """`value` without the tree's leaves; lists have each item pruned. Unchanged parts are shared."""
    if isinstance(value, list):
        items = [_drop(item, tree) for item in value]
        return value if all(new is old for new, old in zip(items, value, strict=True)) else items
    if not isinstance(value, Mapping):
        return value
    copy: dict[str, Any] | None = None
    for key, subtree in tree.items():
        if key not in value:
            continue
        new = _MISSING if subtree is None else _drop(value[key], subtree)
        if new is value[key]:
            continue
        copy = dict(value) if copy is None else copy
        if new is _MISSING:
            del copy[key]
        else:
            copy[key] = new
    return value if copy is None else copy


def _allow(value: Any, tree: _Tree) -> Any:
    """Only the tree's paths of `value`, or _MISSING when nothing in it is allowed."""
    if isinstance(value, list):
        items = [item for item in (_allow(item, tree) for item in value) if item is not _MISSING]
        same = len(items) == len(value) and all(new is old for new, old in zip(items, value, strict=True))
        return value if same else items
    if not isinstance(value, Mapping):
        return _MISSING
    kept: dict[str, Any] = {}
    for key, subtree in tree.items():
        new = _MISSING if key not in value else value[key] if subtree is None else _allow(value[key], subtree)
        if new is not _MISSING:
            kept[key] = new
    same = len(kept) == len(value) and all(kept[key] is value[key] for key in kept)
    return value if same else kept


def _allow_event(event: Mapping[str, Any], tree: _Tree) -> Mapping[str, Any]:
    """Restrict only the top-level objects the tree names; every other top-level field stays."""
    copy: dict[str, Any] | None = None
    for key, subtree in tree.items():
        if key not in event or subtree is None:
            continue
        new = _allow(event[key], subtree)
        if new is event[key]:
            continue
        copy = dict(event) if copy is None else copy
        copy[key] = {} if new is _MISSING else new
    return event if copy is None else copy
