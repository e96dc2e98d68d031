"""Headwater: open-source customer data infrastructure with a Segment-compatible API."""

__version__ = "0.1.0"
