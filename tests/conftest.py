from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import HeadwaterServer

# Property tests check behaviour, not speed: a busy machine must not fail them.
settings.register_profile("headwater", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("headwater")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HeadwaterServer]:
    """A running `headwater serve` with one source whose write key is `test-write-key`."""
    with HeadwaterServer(tmp_path) as running:
        yield running


pytest_plugins = ["tests.warehouses"]
