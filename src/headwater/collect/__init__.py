"""Collect: the Segment-compatible Tracking API in front of the event log."""

from headwater.collect.api import TrackingAPI

__all__ = ["TrackingAPI"]
