"""Segment's warehouse layout, computed in one place for every warehouse engine.

No SQL and no drivers here: `rows_for` turns one enriched Segment message into the rows it
produces (`Row(table, values)`), `infer_type` / `widen` give the column types, and each
loader only creates tables, adds columns and writes values.

Layout (Segment's): `tracks`, `identifies`, `pages`, `screens`, `groups`, `aliases`,
`users` (one row per user_id: `id`, `received_at`, `timestamp`, latest traits),
`accounts` (one row per group id, likewise) and one table per track event named by its
snake_cased name. Every event row has the common columns `id` (messageId), `anonymous_id`,
`user_id`, `received_at`, `sent_at`, `timestamp`, `original_timestamp` and `context_*`
(`uuid_ts` is the loader's). Names are snake_case; objects flatten with `_`; arrays and
other non-scalars are JSON strings; None values are omitted (a column appears with its
first non-null value). Values keep their Python types: timestamps stay ISO-8601 strings
and the loader converts them by column type.

Decisions:
- Reserved names. Segment drops a property or trait whose column collides with a reserved
  column: the common ones everywhere, plus `event`/`event_text` for tracks, `name`/`category`
  for pages and screens, `group_id` for groups, `previous_id` for aliases. Headwater
  drops it from the column set too but loses nothing: every such value goes into one
  JSON text column, `reserved_properties`, keyed by its dotted path in the message (`{"user_id": "x"}`).
  The same holds when two properties snake_case to one column (`accountType` and
  `account_type`): the first keeps the column, the later ones go to
  `reserved_properties`. A collision whose value equals the column's value is not
  recorded (nothing would be lost), e.g. analytics.js copying a page's `name` into its
  properties.
- Every column name starting with `context_` is reserved for the message's context.
- An event whose table name would be one of the standard tables (`Users`, `Tracks`, ...)
  gets a `_` prefix (`_users`); snake_case never yields a leading `_` before a letter, so
  this cannot collide with another event. A track without an event name gets only its
  `tracks` row.
- `users` and `accounts` rows carry `timestamp` so a loader can keep the latest traits
  when messages arrive out of order.
- Strings are TIMESTAMP only in the forms `YYYY-MM-DD` or `YYYY-MM-DD[T ]HH:MM[:SS[.f]]`
  with an optional `Z`/offset; integers beyond 64 bits are TEXT. `coerce` hands every
  engine the same spelling: UTC, microseconds, within years 1-9999 (clamped).
- Ids and the columns a message type sets from its own fields (`event`, `event_text`,
  `name`, `category`, ...) are TEXT whatever their values look like: a page named
  `2024-05-01` or a user id `20240501` must not make the column a timestamp or a number.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

MAX_NAME = 127
RESERVED_PROPERTIES = "reserved_properties"
STANDARD_TABLES = frozenset(
    {"tracks", "identifies", "users", "pages", "screens", "groups", "aliases", "accounts"}
)
COMMON_FIELDS = (
    ("messageId", "id"),
    ("anonymousId", "anonymous_id"),
    ("userId", "user_id"),
    ("receivedAt", "received_at"),
    ("sentAt", "sent_at"),
    ("timestamp", "timestamp"),
    ("originalTimestamp", "original_timestamp"),
)
# Columns a property or trait never takes: in every table, and per kind of message.
RESERVED_COLUMNS = frozenset(
    [column for _, column in COMMON_FIELDS] + ["uuid", "uuid_ts", "loaded_at", RESERVED_PROPERTIES]
)
RESERVED_BY_TYPE: Mapping[str, frozenset[str]] = {
    "track": frozenset({"event", "event_text"}),
    "page": frozenset({"name", "category"}),
    "screen": frozenset({"name", "category"}),
    "group": frozenset({"group_id"}),
    "alias": frozenset({"previous_id"}),
}
ID_FIELDS = frozenset({"id", "anonymous_id", "user_id", "group_id", "previous_id"})

_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")
_WORDS = re.compile(r"[0-9]*[A-Z]+(?=[A-Z][a-z])|[0-9]*[A-Z]?[a-z][a-z0-9]*|[0-9]*[A-Z]+[0-9]*|[0-9]+")
_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:Z|z|[+-]\d{2}(?::?\d{2})?)?)?"
)
_INT64 = (-(2**63), 2**63 - 1)
# What the SDKs send, and every engine reads alike: UTC, at most microseconds.
_PLAIN_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z")


@lru_cache(maxsize=1 << 16)
def snake_case(name: str) -> str:
    """`accountType` → `account_type`, `Order Completed` → `order_completed`, `3ds` → `_3ds`.

    Accents are dropped (`Café` → `cafe`); other non-ASCII characters are separators.
    Cached: a batch repeats the same few hundred names thousands of times."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    words = [w.lower() for part in _SEPARATORS.split(ascii_name) for w in _WORDS.findall(part)]
    out = "_".join(words) or "_"
    if out[0].isdigit():
        out = "_" + out
    return out[:MAX_NAME].rstrip("_") or "_"


class ColumnType(enum.Enum):
    TIMESTAMP = "timestamp"
    BIGINT = "bigint"
    DOUBLE = "double"
    BOOLEAN = "boolean"
    TEXT = "text"


def date_shaped(value: str) -> bool:
    """Whether a string starts like `YYYY-MM-DD`: only such can be a timestamp, so most text
    is decided without a parse."""
    return len(value) >= 10 and value[4] == "-" and value[7] == "-"


def is_timestamp(value: str) -> bool:
    """An ISO-8601 date or date-time that parses (`2024-02-30` does not)."""
    if not _ISO.fullmatch(value):
        return False
    try:
        parse_timestamp(value)
    except ValueError:
        return False
    return True


def parse_timestamp(value: str) -> datetime:
    """A timestamp string (`is_timestamp`) as an aware datetime; no offset means UTC."""
    moment = datetime.fromisoformat(value.replace(",", ".").replace("z", "Z"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def utc_timestamp(value: str) -> str:
    """A timestamp string (`is_timestamp`) as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`; no offset
    means UTC; a moment whose UTC year falls outside 1-9999 is clamped to the nearest end."""
    if _PLAIN_UTC.fullmatch(value):
        return value
    moment = parse_timestamp(value)
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        moment = (datetime.max if moment.year == datetime.max.year else datetime.min).replace(tzinfo=UTC)
    return moment.isoformat(timespec="microseconds")


def infer_type(value: Any) -> ColumnType | None:
    """The column type a value asks for; None for null (no column yet)."""
    kind = type(value)
    if kind is str:
        # Only a string shaped like YYYY-MM-DD... can be a timestamp: skip the parse otherwise.
        return ColumnType.TIMESTAMP if date_shaped(value) and is_timestamp(value) else ColumnType.TEXT
    if kind is float:
        return ColumnType.DOUBLE
    if value is None:
        return None
    if isinstance(value, bool):
        return ColumnType.BOOLEAN
    if isinstance(value, int):
        return ColumnType.BIGINT if _INT64[0] <= value <= _INT64[1] else ColumnType.TEXT
    if isinstance(value, float):
        return ColumnType.DOUBLE
    if isinstance(value, str) and is_timestamp(value):
        return ColumnType.TIMESTAMP
    return ColumnType.TEXT


def widen(a: ColumnType, b: ColumnType) -> ColumnType:
    """The narrowest type holding both: BIGINT+DOUBLE → DOUBLE, any other conflict → TEXT."""
    if a is b:
        return a
    if {a, b} == {ColumnType.BIGINT, ColumnType.DOUBLE}:
        return ColumnType.DOUBLE
    return ColumnType.TEXT


@dataclass(frozen=True)
class Row:
    table: str
    values: dict[str, Any]


def json_line(value: Any) -> bytes:
    """A message (or any value) as JSON, as every warehouse path encodes it."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)


def to_json(value: Any) -> str:
    return json_line(value).decode()


_SCALARS = frozenset({str, bool, int, float})


def _scalar(value: Any) -> Any:
    if type(value) in _SCALARS or isinstance(value, (str, bool, int, float)):
        return value
    return to_json(value)


def _leaves(value: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Leaf paths of nested objects; arrays and scalars are leaves; nulls are skipped."""
    for key, item in value.items():
        here = (*path, key if type(key) is str else str(key))
        kind = type(item)
        if kind is dict or (kind not in _SCALARS and isinstance(item, Mapping)):
            yield from _leaves(item, here)
        elif item is not None:
            yield here, item


@lru_cache(maxsize=1 << 16)
def column_name(path: tuple[str, ...]) -> str:
    return snake_case("_".join(path))


def event_table(event: str) -> str:
    """The table of a track event: its snake_cased name, `_`-prefixed if a standard table's."""
    table = snake_case(event)
    return "_" + table if table in STANDARD_TABLES else table


def _base(message: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, column in COMMON_FIELDS:
        if message.get(field) is not None:
            values[column] = message[field]
    context = message.get("context")
    if isinstance(context, Mapping):
        for path, item in _leaves(context, ("context",)):
            values.setdefault(column_name(path), _scalar(item))
    return ids_as_text(values)


def ids_as_text(values: dict[str, Any]) -> dict[str, Any]:
    """Ids are TEXT whatever the SDK sent (`userId: 42` becomes `"42"`)."""
    for column in ID_FIELDS & values.keys():
        value = values[column]
        if not isinstance(value, str):
            values[column] = to_json(value) if isinstance(value, (dict, list)) else str(value)
    return values


def _with_custom(values: dict[str, Any], custom: Any, kind: str) -> dict[str, Any]:
    """Add flattened properties/traits; reserved or taken names go to `reserved_properties`."""
    if not isinstance(custom, Mapping):
        return values
    reserved = RESERVED_COLUMNS | RESERVED_BY_TYPE.get(kind, frozenset())
    kept: dict[str, Any] = {}
    overflow: dict[str, Any] = {}
    for path, item in _leaves(custom):
        column = column_name(path)
        value = _scalar(item)
        if column in reserved or column.startswith("context_") or column in kept:
            taken = kept.get(column, values.get(column))
            if taken != value or type(taken) is not type(value):
                overflow[".".join(path)] = item
        else:
            kept[column] = value
    values.update(kept)
    if overflow:
        values[RESERVED_PROPERTIES] = to_json(overflow)
    return values


def _latest(message: Mapping[str, Any], key: str, table: str) -> Row | None:
    """The `users` / `accounts` upsert row: id, its time, and the traits."""
    if message.get(key) is None:
        return None
    values = {"id": message[key]}
    for field, column in (("receivedAt", "received_at"), ("timestamp", "timestamp")):
        if message.get(field) is not None:
            values[column] = message[field]
    return Row(table, _with_custom(ids_as_text(values), message.get("traits"), table))


def rows_for(message: Mapping[str, Any]) -> list[Row]:
    """The warehouse rows one enriched Segment message produces (none for unknown types)."""
    kind = message.get("type")
    base = _base(message)
    rows: list[Row] = []
    if kind == "track":
        event = message.get("event")
        if isinstance(event, str) and event:
            base.update(event=snake_case(event), event_text=event)
        rows.append(Row("tracks", dict(base)))
        if isinstance(event, str) and event:
            rows.append(Row(event_table(event), _with_custom(dict(base), message.get("properties"), kind)))
    elif kind in ("page", "screen"):
        for field in ("name", "category"):
            if isinstance(message.get(field), str):
                base[field] = message[field]
        rows.append(Row(kind + "s", _with_custom(base, message.get("properties"), kind)))
    elif kind == "identify":
        rows.append(Row("identifies", _with_custom(base, message.get("traits"), kind)))
        users = _latest(message, "userId", "users")
        rows += [users] if users else []
    elif kind == "group":
        if message.get("groupId") is not None:
            base["group_id"] = message["groupId"]
        rows.append(Row("groups", _with_custom(ids_as_text(base), message.get("traits"), kind)))
        accounts = _latest(message, "groupId", "accounts")
        rows += [accounts] if accounts else []
    elif kind == "alias":
        if message.get("previousId") is not None:
            base["previous_id"] = message["previousId"]
        rows.append(Row("aliases", _with_custom(ids_as_text(base), message.get("traits"), kind)))
    return rows


@dataclass
class TableRows:
    """One table's share of a batch: the column types its values ask for, the rows, and
    the same values column by column (`None` where a row lacks the column)."""

    schema: str
    table: str
    columns: dict[str, ColumnType]
    rows: list[dict[str, Any]]
    values: dict[str, list[Any]] = dataclasses.field(default_factory=dict)


def tables_for(messages: Iterable[tuple[str, Mapping[str, Any]]]) -> list[TableRows]:
    """Group the rows of `(source slug, message)` pairs by schema and table, with the widened
    type of every column seen; tables in order of first appearance."""
    tables: dict[tuple[str, str], TableRows] = {}
    names: dict[tuple[str, str], dict[str, Any]] = {}  # in order of appearance (values unused)
    text_only: dict[tuple[str, str], frozenset[str]] = {}
    for schema, message in messages:
        for row in rows_for(message):
            key = (schema, row.table)
            batch = tables.get(key)
            if batch is None:
                batch = tables[key] = TableRows(schema, row.table, {}, [])
                names[key] = {}
                text_only[key] = ID_FIELDS | RESERVED_BY_TYPE.get(str(message.get("type")), frozenset())
            batch.rows.append(row.values)
            names[key].update(row.values)
    for key, batch in tables.items():
        for name in names[key]:
            values = [row.get(name) for row in batch.rows]
            found = column_type(values)
            if found is not None:
                batch.columns[name] = ColumnType.TEXT if name in text_only[key] else found
                batch.values[name] = values
    return list(tables.values())


def column_type(values: list[Any]) -> ColumnType | None:
    """The type of a column holding `values`: `infer_type` of each, widened together, with
    the usual cases (one Python type throughout) decided in bulk."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if len(kinds) == 1:
        kind = kinds.pop()
        present = [value for value in values if value is not None]
        if kind is str:
            dated = all(map(date_shaped, present))
            return ColumnType.TIMESTAMP if dated and all(map(is_timestamp, present)) else ColumnType.TEXT
        if kind is float:
            return ColumnType.DOUBLE
        if kind is bool:
            return ColumnType.BOOLEAN
        if kind is int:
            fits = _INT64[0] <= min(present) and max(present) <= _INT64[1]
            return ColumnType.BIGINT if fits else ColumnType.TEXT
    found: ColumnType | None = None
    for value in values:
        seen = infer_type(value)
        if seen is not None:
            found = seen if found is None else widen(found, seen)
    return found


def as_text(value: Any) -> str:
    """A value in a TEXT column: JSON spelling for booleans, the value itself for strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_TEXT_AS_IS = frozenset({str, type(None)})


def coerce(values: list[Any], column_type: ColumnType) -> list[Any]:
    """A column's values in the column's (possibly widened) type; None stays None."""
    if column_type is ColumnType.TEXT:
        if set(map(type, values)) <= _TEXT_AS_IS:
            return values
        return [None if value is None else as_text(value) for value in values]
    if column_type is ColumnType.DOUBLE:
        return [None if value is None else float(value) for value in values]
    if column_type is ColumnType.TIMESTAMP:
        return [None if value is None else utc_timestamp(value) for value in values]
    return values
