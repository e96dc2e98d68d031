"""Assemble one Headwater process: the Tracking API, operations endpoints, and the log."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from headwater import __version__
from headwater.collect import TrackingAPI
from headwater.control.readiness import Readiness
from headwater.deliver.conditions import ConditionError, compile_condition
from headwater.deliver.overview import overview
from headwater.deliver.service import Delivery
from headwater.deliver.store import DeliveryStore
from headwater.log import EventLog, open_log
from headwater.metrics import Metrics
from headwater.settings import Settings
from headwater.types import Receive, Scope, Send

TRACKING_PREFIXES = ("/v1/", "/projects/")


class Headwater:
    """The ASGI app `headwater serve` runs: Tracking API paths go straight to the collector."""

    def __init__(self, settings: Settings, log: EventLog | None = None) -> None:
        self.settings = settings
        self.log = log or open_log(settings)
        self.metrics = Metrics()
        self.metrics.watch_log(self.log)
        log_settings = settings.workspace.log
        self.readiness = Readiness(
            self.log,
            settings.data_dir,
            log_settings.min_free_disk_bytes,
            log_settings.max_pending_messages,
        )
        self.tracking = TrackingAPI(settings, self.log, self.readiness, self.metrics)
        self.delivery: Delivery | None = None
        self.operations = Starlette(
            routes=[
                Route("/", self.index),
                Route("/health", self.health),
                Route("/ready", self.ready),
                Route("/metrics", self.prometheus),
                Route("/api/destinations", self.destinations),
                Route("/api/destinations/{name}/dead-letters", self.dead_letters),
                Route("/api/destinations/{name}/redrive", self.redrive, methods=["POST"]),
                Route("/api/destinations/{name}/sync", self.sync, methods=["POST"]),
            ],
            lifespan=self.lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(TRACKING_PREFIXES):
            await self.tracking(scope, receive, send)
        else:
            await self.operations(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.log.start()
        self.delivery = Delivery(self.settings, self.log)
        self.metrics.watch_delivery(self._overview)
        await self.delivery.start()
        try:
            yield
        finally:
            await self.delivery.stop()
            await self.log.close()

    async def index(self, request: Request) -> Response:
        return JSONResponse(
            {
                "name": "Headwater",
                "version": __version__,
                "sources": [
                    {"name": source.name, "slug": source.slug} for source in self.settings.workspace.sources
                ],
                "endpoints": ["/v1/batch", "/v1/track", "/health", "/ready", "/metrics"],
            }
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def ready(self, request: Request) -> Response:
        refusal = self.readiness.refusal()
        if refusal is None:
            return JSONResponse({"ready": True})
        return JSONResponse(
            {"ready": False, "code": refusal.code, "message": refusal.message},
            status_code=503,
            headers={"Retry-After": str(refusal.retry_after_seconds)},
        )

    def _overview(self) -> list[dict[str, Any]]:
        assert self.delivery is not None
        head = self.log.stats().last_position
        return overview(self.delivery.store, self.settings.workspace.destinations, head)

    async def destinations(self, request: Request) -> Response:
        return JSONResponse(self._overview())

    def _store_for(self, request: Request) -> tuple[str, DeliveryStore] | Response:
        """The named destination and the delivery store, or a 404 for an unknown name."""
        name: str = request.path_params["name"]
        if self.delivery is None or not any(c.name == name for c in self.settings.workspace.destinations):
            return JSONResponse({"code": "not_found", "message": f"no destination named {name!r}"}, 404)
        return name, self.delivery.store

    async def dead_letters(self, request: Request) -> Response:
        found = self._store_for(request)
        if isinstance(found, Response):
            return found
        name, store = found
        rows = store.dead_letters(name, limit=int(request.query_params.get("limit", "100")))
        return JSONResponse(
            [
                {
                    "id": row.id,
                    "position": row.position,
                    "attempts": row.attempts,
                    "failed_at": row.failed_at,
                    "reason": row.reason,
                    "message": orjson.loads(row.message),
                }
                for row in rows
            ]
        )

    async def redrive(self, request: Request) -> Response:
        found = self._store_for(request)
        if isinstance(found, Response):
            return found
        name, store = found
        ids = [int(value) for value in request.query_params.getlist("id") if value.isdigit()]
        where = request.query_params.get("where")
        try:
            condition = compile_condition(where) if where else None
        except ConditionError as error:
            return JSONResponse({"code": "invalid_condition", "message": str(error)}, 400)
        return JSONResponse({"redriven": store.redrive(name, ids or None, condition)})

    async def sync(self, request: Request) -> Response:
        """Deliver everything waiting now, whatever the destination's micro-batch cadence."""
        found = self._store_for(request)
        if isinstance(found, Response):
            return found
        name, _ = found
        assert self.delivery is not None
        worker = next((w for w in self.delivery.workers if w.name == name), None)
        if worker is None:
            return JSONResponse({"code": "disabled", "message": f"destination {name!r} is disabled"}, 409)
        position = await worker.flush()
        if worker.paused:
            return JSONResponse(
                {
                    "code": "destination_failing",
                    "message": f"{name} is failing; see `headwater destinations status`",
                },
                503,
            )
        return JSONResponse({"position": position})

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
