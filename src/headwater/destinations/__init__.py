"""Destinations: one module per kind, each behind the small interface in `base.py`."""
