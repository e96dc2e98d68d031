"""The one typed settings object: the workspace file plus the server's command-line flags.

`headwater.yaml` declares the workspace (sources now; destinations, tracking plans and
audiences later) and tunes each stage. Everything has a default, so an empty file works.
Errors name the file, the line and what to fix.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from headwater.units import parse_duration, parse_size


class ConfigError(Exception):
    """The workspace file cannot be used; the message says where and why."""


class SourceConfig(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    name: str
    write_key: str
    slug: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("`name`: a source needs a non-empty name")
        if not self.write_key.strip():
            raise ValueError("`write_key`: a source needs a non-empty write key")
        if not self.slug:
            self.slug = slugify(self.name)
        if not re.fullmatch(r"[a-z0-9_]+", self.slug):
            raise ValueError(f"`slug`: {self.slug!r} may hold only a-z, 0-9 and _")


class CollectSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dedupe: bool = True
    dedupe_window: str | int = "24h"
    trust_forwarded_for: bool = False
    max_message_bytes: str | int = "32KiB"
    max_batch_bytes: str | int = "500KiB"
    max_batch_messages: int = 2500

    def __post_init__(self) -> None:
        _check("dedupe_window", parse_duration, self.dedupe_window)
        _check("max_message_bytes", parse_size, self.max_message_bytes)
        _check("max_batch_bytes", parse_size, self.max_batch_bytes)
        if self.max_batch_messages < 1:
            raise ValueError("`max_batch_messages`: must be at least 1")

    @property
    def dedupe_window_seconds(self) -> float:
        return parse_duration(self.dedupe_window)

    @property
    def message_limit(self) -> int:
        return parse_size(self.max_message_bytes)

    @property
    def batch_limit(self) -> int:
        return parse_size(self.max_batch_bytes)


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: str = ""
    retention: str | int = "30d"
    min_free_disk: str | int = "256MB"
    synchronous: Literal["full", "normal"] = "full"
    max_pending_messages: int = 200_000
    lock_timeout: str | int = "10s"

    def __post_init__(self) -> None:
        _check("retention", parse_duration, self.retention)
        _check("min_free_disk", parse_size, self.min_free_disk)
        _check("lock_timeout", parse_duration, self.lock_timeout)

    @property
    def lock_timeout_seconds(self) -> float:
        return parse_duration(self.lock_timeout)

    @property
    def retention_seconds(self) -> float:
        return parse_duration(self.retention)

    @property
    def min_free_disk_bytes(self) -> int:
        return parse_size(self.min_free_disk)


class MappingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An action: events matching `trigger` are sent as `mapping` makes them."""

    name: str = ""
    trigger: str = ""
    mapping: dict[str, Any]

    def __post_init__(self) -> None:
        from headwater.deliver.conditions import compile_condition
        from headwater.deliver.mapping import compile_mapping

        if self.trigger.strip():
            _check("trigger", compile_condition, self.trigger)
        _check("mapping", compile_mapping, self.mapping)


class DestinationConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    type: str
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    enabled: bool = True
    sources: list[str] = msgspec.field(default_factory=list)
    filters: list[dict[str, Any]] = msgspec.field(default_factory=list)
    mappings: list[MappingConfig] = msgspec.field(default_factory=list)
    retry_for: str | int = "4h"
    retry_backoff: str | int = "1s"
    retry_backoff_max: str | int = "10m"
    max_in_flight: int = 4
    rate_limit: int = 0
    start_from: Literal["now", "beginning"] = "now"

    def __post_init__(self) -> None:
        from headwater.deliver.filters import compile_filters
        from headwater.deliver.routing import rules_for_source
        from headwater.destinations.registry import build

        if not self.name.strip():
            raise ValueError("`name`: a destination needs a non-empty name")
        _check("settings", lambda settings: build(self.type, self.name, settings), self.settings)
        _check("filters", lambda rules: compile_filters(rules_for_source(rules, None)), self.filters)
        _check("retry_for", parse_duration, self.retry_for)
        _check("retry_backoff", parse_duration, self.retry_backoff)
        _check("retry_backoff_max", parse_duration, self.retry_backoff_max)
        if self.max_in_flight < 1:
            raise ValueError("`max_in_flight`: must be at least 1")
        if self.rate_limit < 0:
            raise ValueError("`rate_limit`: events per second, 0 for no limit")

    @property
    def retry_for_seconds(self) -> float:
        return parse_duration(self.retry_for)

    @property
    def retry_backoff_seconds(self) -> float:
        return parse_duration(self.retry_backoff)

    @property
    def retry_backoff_max_seconds(self) -> float:
        return parse_duration(self.retry_backoff_max)


class Workspace(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sources: list[SourceConfig] = msgspec.field(default_factory=list)
    destinations: list[DestinationConfig] = msgspec.field(default_factory=list)
    collect: CollectSettings = msgspec.field(default_factory=CollectSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)

    def __post_init__(self) -> None:
        names = [destination.name for destination in self.destinations]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"`destinations[{index}].name`: {name!r} is used by an earlier destination")
        slugs = {source.slug for source in self.sources}
        for index, destination in enumerate(self.destinations):
            for position, slug in enumerate(destination.sources):
                if slug not in slugs:
                    raise ValueError(
                        f"`destinations[{index}].sources[{position}]`: no source has the slug {slug!r}"
                    )
            for position, rule in enumerate(destination.filters):
                if "source" in rule and rule["source"] not in slugs:
                    raise ValueError(
                        f"`destinations[{index}].filters[{position}].source`: no source has the slug"
                        f" {rule['source']!r}"
                    )
        for attribute in ("write_key", "slug"):
            seen: set[str] = set()
            for index, source in enumerate(self.sources):
                value = getattr(source, attribute)
                if value in seen:
                    raise ValueError(
                        f"`sources[{index}].{attribute}`: {value!r} is used by an earlier source;"
                        " each source needs its own"
                    )
                seen.add(value)


@dataclass(frozen=True)
class Settings:
    """Everything a Headwater process needs to know, in one place."""

    data_dir: Path = Path("headwater-data")
    host: str = "127.0.0.1"
    port: int = 8080
    config_path: Path | None = None
    workspace: Workspace = field(default_factory=Workspace)

    @property
    def log_url(self) -> str:
        return self.workspace.log.url or f"sqlite:///{self.data_dir / 'log.sqlite3'}"

    @property
    def sources_by_write_key(self) -> dict[str, SourceConfig]:
        return {source.write_key: source for source in self.workspace.sources}


def _check(field: str, parse: Callable[[Any], object], value: object) -> None:
    """Run a parser and name the field in its error, so the error can point at its line."""
    try:
        parse(value)
    except ValueError as error:
        raise ValueError(f"`{field}`: {error}") from None


def slugify(name: str) -> str:
    """`"Web App (prod)"` → `"web_app_prod"`: the schema name a warehouse will use."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return slug or "source"


def new_write_key() -> str:
    return secrets.token_urlsafe(24)


def load_workspace(path: Path) -> Workspace:
    """Parse and check a workspace file; a ConfigError names the line that is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the workspace file ({error.strerror})") from error
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from error
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the workspace file must be a mapping (keys such as `sources:`)")
    try:
        return msgspec.convert(data, Workspace)
    except msgspec.ValidationError as error:
        message, json_path = _split_validation_error(str(error))
        json_path += _path_inside(message)
        line = _line_of(root, json_path)
        where = f"{path}:{line}" if line else str(path)
        at = f" (at {json_path})" if json_path != "$" else ""
        raise ConfigError(f"{where}: {message}{at}") from error


DEFAULT_WAREHOUSE = "warehouse"


def write_default_workspace(path: Path, source_name: str = "My first source") -> Workspace:
    """Create a workspace file: one source with a fresh write key, loading into the embedded
    DuckDB warehouse."""
    source = SourceConfig(name=source_name, write_key=new_write_key())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Headwater workspace, created on first start. Edit it and restart `headwater serve`.\n"
        "sources:\n"
        f"  - name: {source.name}\n"
        f"    write_key: {source.write_key}\n"
        "destinations:\n"
        "  # Segment's warehouse tables in DATA_DIR/warehouse.duckdb:\n"
        f'  #   headwater sql "SELECT event, count(*) FROM {source.slug}.tracks GROUP BY 1"\n'
        f"  - name: {DEFAULT_WAREHOUSE}\n"
        "    type: duckdb\n"
        "    settings: {path: warehouse.duckdb, load_every: 30s, batch_size: 10000}\n",
        encoding="utf-8",
    )
    return load_workspace(path)


_PATH_SUFFIX = re.compile(r"^(.*) - at `(\$[^`]*)`$", re.DOTALL)
_PATH_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\"?([^\]\"]+)\"?\]")


def _split_validation_error(text: str) -> tuple[str, str]:
    match = _PATH_SUFFIX.match(text)
    if not match:
        return text, "$"
    return match.group(1), match.group(2)


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_FIELD_PREFIX = re.compile(r"^`([^`]+)`: ")


def _path_inside(message: str) -> str:
    """The part of the path only the message names: an unknown key, or a checked field."""
    match = _UNKNOWN_FIELD.search(message) or _FIELD_PREFIX.match(message)
    if not match:
        return ""
    inner = match.group(1)
    return inner if inner.startswith("[") else f".{inner}"


def _line_of(node: Any, json_path: str) -> int | None:
    """1-based line of the YAML node at `$.a[0].b`, or of its nearest existing parent."""
    if node is None:
        return None
    line: int = node.start_mark.line + 1
    for key, index, quoted in _PATH_PART.findall(json_path[1:]):
        child = None
        if isinstance(node, yaml.MappingNode):
            wanted = key or quoted
            for key_node, value_node in node.value:
                if key_node.value == wanted:
                    child = value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and index:
            position = int(index)
            if position < len(node.value):
                child = node.value[position]
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line
