from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import HeadwaterServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HeadwaterServer]:
    """A running `headwater serve` with one source whose write key is `test-write-key`."""
    with HeadwaterServer(tmp_path) as running:
        yield running


pytest_plugins = ["tests.warehouses"]
