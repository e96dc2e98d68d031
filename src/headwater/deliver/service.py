"""Delivery as one service the app starts and stops: a worker task per enabled destination."""

from __future__ import annotations

import asyncio
import contextlib

from headwater.deliver.router import DestinationWorker
from headwater.deliver.store import DeliveryStore
from headwater.destinations.registry import build
from headwater.log import EventLog
from headwater.settings import Settings


class Delivery:
    def __init__(self, settings: Settings, log: EventLog) -> None:
        self.store = DeliveryStore(settings.data_dir / "delivery.sqlite3")
        self.workers = [
            DestinationWorker(
                config, build(config.type, config.name, config.settings, settings.data_dir), log, self.store
            )
            for config in settings.workspace.destinations
            if config.enabled
        ]
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for worker in self.workers:
            worker.prepare()
            self.tasks.append(asyncio.create_task(worker.run(), name=f"deliver:{worker.name}"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        for worker in self.workers:
            await worker.destination.close()
        self.store.close()
