"""The workspace file: what loads, the defaults, and errors that point at file:line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from headwater.settings import ConfigError, Settings, load_workspace, slugify
from headwater.units import parse_duration, parse_size


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "headwater.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_workspace(path)
    return str(caught.value)


def assert_points_at(message: str, path: Path, line: int) -> None:
    match = re.match(rf"^{re.escape(str(path))}:(\d+): ", message)
    assert match, f"error does not start with {path}:<line>: -> {message!r}"
    assert int(match.group(1)) == line, f"expected line {line}: {message!r}"


def test_valid_workspace_loads_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n"
        "  - name: Web App (prod)\n"
        "    write_key: key-web\n"
        "    description: the storefront\n"
        "  - name: Backend\n"
        "    write_key: key-backend\n"
        "    slug: api_server\n"
        "collect:\n"
        "  dedupe_window: 2h\n"
        "  max_message_bytes: 16KiB\n"
        "  max_batch_messages: 100\n"
        "log:\n"
        "  retention: 7d\n"
        "  synchronous: normal\n",
    )
    workspace = load_workspace(path)
    web, backend = workspace.sources
    assert (web.name, web.write_key, web.slug, web.description) == (
        "Web App (prod)",
        "key-web",
        "web_app_prod",
        "the storefront",
    )
    assert (backend.slug, backend.write_key) == ("api_server", "key-backend")
    assert workspace.collect.dedupe_window_seconds == 7200
    assert workspace.collect.message_limit == 16 * 1024
    assert workspace.collect.max_batch_messages == 100
    assert workspace.log.retention_seconds == 7 * 86400
    assert workspace.log.synchronous == "normal"
    settings = Settings(data_dir=tmp_path / "d", workspace=workspace)
    assert set(settings.sources_by_write_key) == {"key-web", "key-backend"}
    assert settings.sources_by_write_key["key-backend"] is backend
    assert settings.log_url == f"sqlite:///{tmp_path / 'd' / 'log.sqlite3'}"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    workspace = load_workspace(write(tmp_path, text))
    assert workspace.sources == []
    assert workspace.collect.dedupe is True
    assert workspace.collect.dedupe_window_seconds == 24 * 3600
    assert workspace.collect.message_limit == 32 * 1024
    assert workspace.collect.batch_limit == 500 * 1024
    assert workspace.collect.max_batch_messages == 2500
    assert workspace.log.retention_seconds == 30 * 86400
    assert workspace.log.min_free_disk_bytes == 256 * 1000**2
    assert workspace.log.synchronous == "full"


def test_wrong_type_in_a_source_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  - name: Web\n    write_key: k1\n  - name: App\n    write_key: [1, 2]\n",
    )
    message = config_error(path)
    assert_points_at(message, path, 5)
    assert "str" in message and "sources[1].write_key" in message


def test_missing_write_key_names_the_source(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  - name: Web\n    write_key: k1\n  - name: App\n    description: no key\n",
    )
    message = config_error(path)
    assert_points_at(message, path, 4)
    assert "write_key" in message


def test_empty_write_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  - name: Web\n    write_key: '  '\n")
    assert "write_key" in config_error(path)


def test_unknown_top_level_key_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "# my workspace\nsources:\n  - name: Web\n    write_key: k1\n\nsourcez: []\n")
    message = config_error(path)
    assert "sourcez" in message
    assert_points_at(message, path, 6)


def test_unknown_key_inside_a_section_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "collect:\n  dedupe: true\n  dedupe_windw: 1h\n")
    message = config_error(path)
    assert "dedupe_windw" in message
    assert_points_at(message, path, 3)


def test_bad_duration_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  - name: Web\n    write_key: k1\n"
        "collect:\n  dedupe: true\n  max_batch_messages: 10\n  dedupe_window: 24x\n",
    )
    message = config_error(path)
    assert "24x" in message
    assert_points_at(message, path, 7)


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  - name: Web\n    write_key: k1\ncollect:\n  dedupe: true\n    dedupe_window: 1h\n",
    )
    message = config_error(path)
    assert "not valid YAML" in message
    assert_points_at(message, path, 6)


def test_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "- name: Web\n")
    assert_points_at(config_error(path), path, 1)


def test_duplicate_write_keys_name_the_repeat(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  - name: Web\n    write_key: same\n  - name: App\n    write_key: same\n",
    )
    message = config_error(path)
    assert "`sources[1].write_key`: 'same' is used by an earlier source" in message
    assert_points_at(message, path, 5)


def test_duplicate_slugs_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path, "sources:\n  - name: Web App\n    write_key: a\n  - name: web-app\n    write_key: b\n"
    )
    assert "`sources[1].slug`: 'web_app' is used by an earlier source" in config_error(path)


def test_invalid_explicit_slug_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  - name: Web\n    write_key: a\n    slug: Web-App\n")
    message = config_error(path)
    assert "Web-App" in message
    assert_points_at(message, path, 4)


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(missing) in config_error(missing)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Web App (prod)", "web_app_prod"),
        ("  iOS -- v2  ", "ios_v2"),
        ("already_ok_1", "already_ok_1"),
        ("!!!", "source"),
        ("", "source"),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("30d", 2592000),
        ("1w", 604800),
        ("250ms", 0.25),
        ("1.5h", 5400),
        (" 10 s ", 10),
        ("45", 45),
        (0, 0),
        (12, 12),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["24x", "", "h", "-5s", "1h30m", -1, True])
def test_parse_duration_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("10b", 10),
        ("512KB", 512_000),
        ("32KiB", 32_768),
        ("256MB", 256_000_000),
        ("2GiB", 2 * 1024**3),
        ("1.5k", 1500),
        ("1tb", 10**12),
        (" 4 mib ", 4 * 1024**2),
        (0, 0),
        (7, 7),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["12 apples", "", "KB", "-1KB", "1e3", -1, False])
def test_parse_size_rejects(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)
