"""Segment's rows for a whole batch at once, column by column in Arrow.

`schema.rows_for` defines the layout one message at a time, in Python: ~35 µs a message,
which would make Python the slowest part of a load. Here the batch arrives as JSON lines;
pyarrow parses them into typed columns in C++, and each table's columns are picked,
renamed (`schema.snake_case`, once per column) and filtered as whole arrays. The result
is the same as `schema.tables_for` — tests compare the two on generated batches — and
wherever a column or a row is irregular, the Python definition computes it:

- A piece of the batch pyarrow cannot type (a property that is a number in one message
  and a string in another, a duplicated key) is split in halves and parsed again; small
  pieces go to `schema.tables_for` whole.
- A row whose properties collide with a reserved column or with each other (what goes to
  `reserved_properties`), or whose ids are neither strings nor integers, is left to
  `schema.tables_for`.
- A column that Arrow cannot hold as Segment's layout spells it (arrays, which are JSON
  text; integers beyond 64 bits; strings pyarrow took for timestamps) is read from the
  original messages of the rows that have it, in Python.
- A number column turned into text (after a type conflict) is spelled from the original
  messages, since Arrow keeps `1` and `1.0` alike.

The result is a list of `Part`s: a table's share of the batch, typed like `tables_for`'s.
`Part.arrays_as` gives its columns in the warehouse's types, ready for an engine's bulk
path: strings, int64, float64, bool and timestamp[us, UTC].
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from headwater.warehouse.schema import (
    COMMON_FIELDS,
    ID_FIELDS,
    RESERVED_BY_TYPE,
    RESERVED_COLUMNS,
    ColumnType,
    as_text,
    coerce,
    column_name,
    column_type,
    date_shaped,
    event_table,
    ids_as_text,
    snake_case,
    tables_for,
    to_json,
)

T = TypeVar("T")
TIMESTAMP = pa.timestamp("us", tz="UTC")
ARROW_TYPES: Mapping[ColumnType, pa.DataType] = {
    ColumnType.TIMESTAMP: TIMESTAMP,
    ColumnType.BIGINT: pa.int64(),
    ColumnType.DOUBLE: pa.float64(),
    ColumnType.BOOLEAN: pa.bool_(),
    ColumnType.TEXT: pa.string(),
}
# Pieces this small that pyarrow cannot type are not split further: Python loads them.
SMALLEST_PIECE = 64
TABLES = {
    "track": "tracks",
    "identify": "identifies",
    "page": "pages",
    "screen": "screens",
    "group": "groups",
    "alias": "aliases",
}
CUSTOM = {
    "track": "properties",
    "page": "properties",
    "screen": "properties",
    "identify": "traits",
    "group": "traits",
    "alias": "traits",
}
OWN_ID = {"group": ("groupId", "group_id"), "alias": ("previousId", "previous_id")}
_PLAIN_UTC = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"
_DATE_SHAPED = r"^\d{4}-\d{2}-\d{2}"
_INT64_EDGE = 2.0**63
_NATURAL: Mapping[pa.DataType, ColumnType] = {
    pa.int64(): ColumnType.BIGINT,
    pa.float64(): ColumnType.DOUBLE,
    pa.bool_(): ColumnType.BOOLEAN,
}


class Originals:
    """The batch's messages as sent, parsed on demand (each at most once)."""

    def __init__(self, lines: Sequence[bytes]) -> None:
        self.lines = lines
        self.parsed: dict[int, Any] = {}
        self.kept: Mapping[int, bytes] | None = None  # some lines alone, by number (`only`)

    def message(self, line: int) -> Any:
        found = self.parsed.get(line)
        if found is None:
            raw = self.lines[line] if self.kept is None else self.kept[line]
            found = self.parsed[line] = orjson.loads(raw)
        return found

    def only(self, lines: Iterable[int]) -> Originals:
        """These lines alone, for what is kept longer than its batch."""
        kept = Originals(())
        kept.kept = {line: self.lines[line] if self.kept is None else self.kept[line] for line in lines}
        return kept

    def value(self, line: int, path: tuple[str, ...]) -> Any:
        here = self.message(line)
        for key in path:
            if not isinstance(here, dict):
                return None
            here = here.get(key)
        return here


@dataclass
class Part:
    """One table's share of a batch. `columns` are the types its values ask for (as
    `tables_for` would say); `arrays` hold the values as parsed: strings (TEXT and
    TIMESTAMP), int64, float64 or bool. `lines`/`paths` find a row's original value."""

    schema: str
    table: str
    columns: dict[str, ColumnType]
    arrays: dict[str, pa.Array]
    lines: pa.Array | None = None
    paths: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    originals: Originals | None = None
    python: dict[str, list[Any]] | None = None  # `tables_for`'s values, when it made the part
    stamps: dict[str, pa.Array] = field(default_factory=dict)  # TIMESTAMP columns, parsed

    def column_values(self, name: str) -> list[Any]:
        """One column's values as Python objects, as parsed."""
        return list(self.python[name]) if self.python is not None else self.arrays[name].to_pylist()

    def with_values(self, name: str, values: list[Any]) -> Part:
        """The part with one column's values replaced (the same type)."""
        if self.python is not None:
            return dataclasses.replace(self, python={**self.python, name: values})
        array = pa.array(values, self.arrays[name].type)
        return dataclasses.replace(self, arrays={**self.arrays, name: array})

    def detached(self) -> Part:
        """The part without the rest of its batch: its arrays compacted (a slice holds on to
        the whole batch's), and of the original messages its own only."""
        own = {name: pa.concat_arrays([array]) for name, array in self.arrays.items()}
        stamps = {name: pa.concat_arrays([array]) for name, array in self.stamps.items()}
        originals = self.originals
        if originals is not None and self.lines is not None:
            originals = originals.only(self.lines.to_pylist())
        lines = None if self.lines is None else pa.concat_arrays([self.lines])
        return dataclasses.replace(self, arrays=own, stamps=stamps, originals=originals, lines=lines)

    def renamed(self, names: Mapping[str, str]) -> Part:
        """The part with its columns renamed (`names`: old → new)."""

        def rename(columns: Mapping[str, Any]) -> dict[str, Any]:
            return {names.get(name, name): value for name, value in columns.items()}

        return dataclasses.replace(
            self,
            columns=rename(self.columns),
            arrays=rename(self.arrays),
            paths=rename(self.paths),
            python=None if self.python is None else rename(self.python),
            stamps=rename(self.stamps),
        )

    def arrays_as(
        self, types: Mapping[str, ColumnType], *, text_timestamps: bool = False
    ) -> dict[str, pa.Array]:
        """The columns named in `types`, each converted to its (possibly wider) type.
        Timestamps are timestamp[us, UTC], or with `text_timestamps` ISO-8601 text in UTC as
        `schema.utc_timestamp` spells it (what an engine that parses text reads fastest)."""
        return {name: self._as(name, kind, text_timestamps) for name, kind in types.items()}

    def _as(self, name: str, kind: ColumnType, text_timestamps: bool = False) -> pa.Array:
        if self.python is not None:
            values = coerce(self.python[name], kind)
            if kind is ColumnType.TIMESTAMP:
                texts = pa.array(values, pa.string())
                return texts if text_timestamps else texts.cast(TIMESTAMP)
            return pa.array(values, ARROW_TYPES[kind])
        array = self.arrays[name]
        if kind is ColumnType.TIMESTAMP and text_timestamps:
            if name in self.stamps or _plain_utc(array):
                return array
            return pa.array(coerce(array.to_pylist(), ColumnType.TIMESTAMP), pa.string())
        if kind is ColumnType.TIMESTAMP:
            return self.stamps[name] if name in self.stamps else timestamps(array)
        if kind is ColumnType.DOUBLE:
            return array.cast(pa.float64(), safe=False)
        if kind is ColumnType.TEXT and array.type == pa.float64():
            return pa.array(self._originals_as_text(name, array), pa.string())
        return array.cast(ARROW_TYPES[kind])

    def _originals_as_text(self, name: str, array: pa.Array) -> list[str | None]:
        """Numbers as text, spelled as sent: `1` stays `1`, `1.0` stays `1.0`."""
        assert self.originals is not None and self.lines is not None
        lines = self.lines.to_pylist()
        out: list[str | None] = []
        for line, value in zip(lines, array.to_pylist(), strict=True):
            if value is None:
                out.append(None)
                continue
            original = next(
                (
                    found
                    for path in self.paths[name]
                    if (found := self.originals.value(line, path)) is not None
                ),
                value,
            )
            out.append(as_text(original))
        return out


def timestamps(array: pa.Array) -> pa.Array:
    """ISO-8601 strings (`schema.is_timestamp`) as UTC timestamps, as `schema.utc_timestamp` reads them."""
    if _plain_utc(array):
        return array.cast(TIMESTAMP)
    return pa.array(coerce(array.to_pylist(), ColumnType.TIMESTAMP), pa.string()).cast(TIMESTAMP)


def _plain_utc_rows(array: pa.Array) -> pa.Array:
    """Which values are `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (as SDKs send): what Arrow reads as
    Python does, but for year 0."""
    return pc.and_(pc.match_substring_regex(array, _PLAIN_UTC), pc.invert(pc.starts_with(array, "0000")))


def _plain_utc(array: pa.Array) -> bool:
    """Whether every value is of that form."""
    return pc.all(_plain_utc_rows(array)).as_py() is not False


def parts_for(sources: Sequence[str], lines: Sequence[bytes], joined: bytes | None = None) -> list[Part]:
    """The parts of a batch of JSON lines, each with its source's slug (`sources`);
    `joined`: the lines joined by newlines, if the batch came so."""
    originals = Originals(lines)
    parts: list[Part] = []
    _parse(sources, originals, 0, len(lines), parts, joined)
    return parts


def _parse(
    sources: Sequence[str],
    originals: Originals,
    start: int,
    end: int,
    parts: list[Part],
    joined: bytes | None = None,
) -> None:
    if start >= end:
        return
    try:
        table = pa_json.read_json(
            io.BytesIO(joined if joined is not None else b"\n".join(originals.lines[start:end])),
            read_options=pa_json.ReadOptions(block_size=1 << 22, use_threads=False),
        )
    except (pa.ArrowException, ValueError):
        table = None
    if table is None or table.num_rows != end - start:
        if end - start <= SMALLEST_PIECE:
            parts += _python_parts([(sources[line], line) for line in range(start, end)], originals)
            return
        middle = (start + end) // 2
        _parse(sources, originals, start, middle, parts)
        _parse(sources, originals, middle, end, parts)
        return
    _Piece(table, sources, originals, start).split(parts)


def _python_parts(lines: Sequence[tuple[str, int]], originals: Originals) -> list[Part]:
    """`schema.tables_for` of these `(source slug, line)`s, as parts."""
    return [
        Part(rows.schema, rows.table, dict(rows.columns), {}, python=rows.values)
        for rows in tables_for((source, originals.message(line)) for source, line in lines)
    ]


@dataclass
class _Column:
    """A column in the making: its values over a piece's rows and where they came from."""

    array: pa.Array
    paths: tuple[tuple[str, ...], ...]
    exact: bool = True  # False: Arrow's values are Python's made text, not as sent
    # For text that looks like timestamps: those of the SDKs' form, parsed (null elsewhere).
    stamps: pa.Array | None = None

    def filter(self, mask: pa.Array) -> _Column:
        stamps = None if self.stamps is None else self.stamps.filter(mask)
        return _Column(self.array.filter(mask), self.paths, self.exact, stamps)

    def slice(self, start: int, length: int) -> _Column:
        stamps = None if self.stamps is None else self.stamps.slice(start, length)
        return _Column(self.array.slice(start, length), self.paths, self.exact, stamps)

    def with_stamps(self) -> _Column:
        """The column with `stamps`, if its first value looks like a date: parsing a whole
        column once beats checking each table's share of it."""
        array = self.array
        if array.type != pa.string() or array.null_count == len(array):
            return self
        if not date_shaped(array.drop_null()[0].as_py()):
            return self
        try:
            stamps = pc.if_else(_plain_utc_rows(array), array, pa.scalar(None, pa.string())).cast(TIMESTAMP)
        except pa.ArrowException:  # a day that does not exist, say: each table's share decides
            return self
        return dataclasses.replace(self, stamps=stamps)


class _Piece:
    """A parsed run of lines: split by source and message type, then into tables."""

    def __init__(self, table: pa.Table, sources: Sequence[str], originals: Originals, start: int) -> None:
        self.table = table
        self.originals = originals
        self.lines = pa.array(range(start, start + table.num_rows), pa.int64())
        self.sources = pa.array(sources[start : start + table.num_rows], pa.string())

    def split(self, parts: list[Part]) -> None:
        kinds = self._column(self.table, "type")
        if kinds is None or kinds.type != pa.string():
            pairs = zip(self.sources.to_pylist(), self.lines.to_pylist(), strict=True)
            parts += _python_parts(list(pairs), self.originals)
            return
        # Rows in order of source, type and event (stable): each table's share is then a
        # slice, which costs nothing, where filtering copied every column once per table.
        keys = {"source": self.sources, "type": kinds}
        event = self._column(self.table, "event")
        if event is not None and event.type == pa.string():
            keys["event"] = event
        order = pc.sort_indices(pa.table(keys), sort_keys=[(key, "ascending") for key in keys])
        table, lines = self.table.take(order), self.lines.take(order)
        start = 0
        for (source, kind), length in _runs(
            zip(self.sources.take(order).to_pylist(), kinds.take(order).to_pylist(), strict=True)
        ):
            if kind in TABLES:
                _Rows(self, source, kind, table.slice(start, length), lines.slice(start, length)).split(parts)
            start += length

    @staticmethod
    def _column(table: pa.Table, name: str) -> pa.Array | None:
        if name not in table.column_names:
            return None
        column = table.column(name)
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


class _Rows:
    """The rows of one source and one message type in a piece."""

    def __init__(self, piece: _Piece, schema: str, kind: str, table: pa.Table, lines: pa.Array) -> None:
        self.piece = piece
        self.schema = schema
        self.kind = kind
        self.table = table
        self.lines = lines
        self.dirty = pa.repeat(False, table.num_rows)

    def split(self, parts: list[Part]) -> None:
        base = self._base()
        custom = self._custom(base)
        lines = self.lines
        if pc.any(self.dirty).as_py():
            clean = pc.invert(self.dirty)
            python_lines = self.lines.filter(self.dirty).to_pylist()
            parts += _python_parts([(self.schema, line) for line in python_lines], self.piece.originals)
            if not pc.any(clean).as_py():
                return
            base = {name: column.filter(clean) for name, column in base.items()}
            custom = {name: column.filter(clean) for name, column in custom.items()}
            lines = self.lines.filter(clean)
        base = {name: column.with_stamps() for name, column in base.items()}
        custom = {name: column.with_stamps() for name, column in custom.items()}
        text_only = ID_FIELDS | RESERVED_BY_TYPE.get(self.kind, frozenset())
        if self.kind != "track":
            parts.append(self._part(TABLES[self.kind], {**base, **custom}, lines, text_only))
            return
        parts.append(self._part("tracks", base, lines, text_only))
        if "event_text" not in base:
            return
        start = 0  # the piece's rows are in order of event: each one's are a run
        for event, length in _runs(base["event_text"].array.to_pylist()):
            if event is not None:
                columns = {name: column.slice(start, length) for name, column in {**base, **custom}.items()}
                parts.append(self._part(event_table(event), columns, lines.slice(start, length), text_only))
            start += length

    def _part(
        self, table: str, columns: Mapping[str, _Column], lines: pa.Array, text_only: frozenset[str]
    ) -> Part:
        types: dict[str, ColumnType] = {}
        arrays: dict[str, pa.Array] = {}
        stamps: dict[str, pa.Array] = {}
        for name, column in columns.items():
            stamped = column.stamps is not None and column.stamps.null_count == column.array.null_count
            found = ColumnType.TIMESTAMP if stamped else _column_type(column.array)
            if found is None or column.array.null_count == len(column.array):
                continue
            types[name] = ColumnType.TEXT if name in text_only else found
            arrays[name] = column.array
            if stamped and column.stamps is not None:
                stamps[name] = column.stamps
        paths = {name: columns[name].paths for name in arrays}
        return Part(self.schema, table, types, arrays, lines, paths, self.piece.originals, stamps=stamps)

    # -- columns -------------------------------------------------------------------------

    def _base(self) -> dict[str, _Column]:
        """The common columns, the context's, and the type's own (`event`, `name`, ...)."""
        columns: dict[str, _Column] = {}
        for field_name, name in COMMON_FIELDS:
            self._add_field(columns, field_name, name)
        context = _Piece._column(self.table, "context")
        if context is not None and pa.types.is_struct(context.type):
            for path, leaf in _leaves(context, ("context",)):
                name = column_name(path)
                column = self._regular(leaf, path)
                if name in columns:  # the first by key order wins, and Arrow keeps no order
                    self._mark(pc.is_valid(column.array))
                    self._mark(pc.is_valid(columns[name].array))
                else:
                    columns[name] = column
        if self.kind == "track":
            event = self._text_field("event")
            if event is not None:
                named = pc.if_else(pc.equal(event, ""), pa.scalar(None, pa.string()), event)
                names = pc.unique(named.drop_null()).to_pylist()
                snakes = pa.array([snake_case(name) for name in names], pa.string())
                columns["event"] = _Column(snakes.take(pc.index_in(named, pa.array(names, pa.string()))), ())
                columns["event_text"] = _Column(named, (("event",),))
        elif self.kind in ("page", "screen"):
            for name in ("name", "category"):
                found = self._text_field(name)
                if found is not None:
                    columns[name] = _Column(found, ((name,),))
        elif self.kind in OWN_ID:
            self._add_field(columns, *OWN_ID[self.kind])
        return columns

    def _text_field(self, name: str) -> pa.Array | None:
        """A field that counts only where it is a string (`event`, a page's `name`)."""
        array = _Piece._column(self.table, name)
        if array is None:
            return None
        if array.type == pa.string():
            return array
        if not pa.types.is_timestamp(array.type):  # pyarrow's reading of a date-like string
            return None
        return pa.array(
            [value if isinstance(value, str) else None for value in self._raw(array, (name,))], pa.string()
        )

    def _add_field(self, columns: dict[str, _Column], field_name: str, name: str) -> None:
        array = _Piece._column(self.table, field_name)
        if array is None or array.type == pa.null():
            return
        path = (field_name,)
        columns[name] = self._id_text(array, path) if name in ID_FIELDS else self._regular(array, path)

    def _custom(self, base: Mapping[str, _Column]) -> dict[str, _Column]:
        """Properties or traits. Rows where one collides with a reserved column or with another
        (what `schema` keeps in `reserved_properties`) are left to `schema.tables_for`."""
        key = CUSTOM[self.kind]
        custom = _Piece._column(self.table, key)
        kept: dict[str, _Column] = {}
        if custom is None or not pa.types.is_struct(custom.type):
            return kept
        reserved = RESERVED_COLUMNS | RESERVED_BY_TYPE.get(self.kind, frozenset())
        for path, leaf in _leaves(custom, (key,)):
            name = column_name(path[1:])
            column = self._regular(leaf, path)
            if name in reserved or name.startswith("context_"):
                taken = base.get(name)
                self._mark(pc.is_valid(column.array) if taken is None else _differs(taken, column))
            elif name in kept:  # the first by key order wins, and Arrow keeps no order
                self._mark(pc.is_valid(column.array))
                self._mark(pc.is_valid(kept[name].array))
            else:
                kept[name] = column
        return kept

    def _mark(self, rows: pa.Array) -> None:
        self.dirty = pc.or_(self.dirty, pc.fill_null(rows, False))

    # -- values ----------------------------------------------------------------------------

    def _regular(self, array: pa.Array, path: tuple[str, ...]) -> _Column:
        """A leaf's values as Python has them, in Arrow; from the originals where Arrow's
        differ (arrays, objects, integers beyond 64 bits, strings taken for timestamps)."""
        kind = array.type
        if kind in (pa.string(), pa.int64(), pa.bool_(), pa.null()):
            return _Column(array, (path,))
        if kind == pa.float64():
            big = pc.and_(pc.greater_equal(pc.abs(array), _INT64_EDGE), pc.equal(pc.floor(array), array))
            if not pc.any(pc.fill_null(big, False)).as_py():
                return _Column(array, (path,))
        values = [
            value if value is None or isinstance(value, (str, bool, int, float)) else to_json(value)
            for value in self._raw(array, path)
        ]
        found = column_type(values)
        if found is None:
            return _Column(pa.nulls(len(values), pa.string()), (path,), exact=False)
        arrow_type = pa.string() if found is ColumnType.TIMESTAMP else ARROW_TYPES[found]
        return _Column(pa.array(coerce(values, found), arrow_type), (path,), exact=False)

    def _id_text(self, array: pa.Array, path: tuple[str, ...]) -> _Column:
        """Ids as `schema.ids_as_text` spells them."""
        if array.type == pa.string():
            return _Column(array, (path,))
        if array.type == pa.int64():
            return _Column(array.cast(pa.string()), (path,), exact=False)
        values = [
            None if value is None else ids_as_text({"id": value})["id"] for value in self._raw(array, path)
        ]
        return _Column(pa.array(values, pa.string()), (path,), exact=False)

    def _raw(self, array: pa.Array, path: tuple[str, ...]) -> list[Any]:
        """The leaf's values in the messages as sent."""
        originals = self.piece.originals
        valid = pc.is_valid(array).to_pylist()
        return [
            originals.value(line, path) if present else None
            for line, present in zip(self.lines.to_pylist(), valid, strict=True)
        ]


def _runs(values: Iterable[T]) -> Iterator[tuple[T, int]]:
    """Each run of equal values in `values`: the value and how many times it repeats."""
    for value, run in itertools.groupby(values):
        yield value, sum(1 for _ in run)


def _leaves(array: pa.Array, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], pa.Array]]:
    """Leaf columns of a struct column, objects flattened; a leaf is null where any parent is."""
    if not pa.types.is_struct(array.type):
        yield path, array
        return
    children = array.flatten()
    for index in range(array.type.num_fields):
        yield from _leaves(children[index], (*path, array.type.field(index).name))


def _differs(taken: _Column, value: _Column) -> pa.Array:
    """Rows where a colliding property's value is not the column's (of the same type)."""
    present = pc.is_valid(value.array)
    if not (taken.exact and value.exact) or taken.array.type != value.array.type:
        return present
    if value.array.type == pa.float64():
        return present
    same = pc.fill_null(pc.equal(taken.array, value.array), False)
    return pc.and_(present, pc.invert(same))


def _column_type(array: pa.Array) -> ColumnType | None:
    """`schema.column_type` of a regular column."""
    if array.null_count == len(array) or array.type == pa.null():
        return None
    natural = _NATURAL.get(array.type)
    if natural is not None:
        return natural
    present = array.drop_null()
    if not date_shaped(present[0].as_py()):
        return ColumnType.TEXT  # most text columns: one look decides
    if not pc.all(pc.match_substring_regex(present, _DATE_SHAPED)).as_py():
        return ColumnType.TEXT
    if _plain_utc(present):
        try:
            present.cast(TIMESTAMP)
        except pa.ArrowException:
            return column_type(present.to_pylist())
        return ColumnType.TIMESTAMP
    return column_type(present.to_pylist())
