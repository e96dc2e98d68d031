"""Deliver: route events from the log to each destination, reliably and in per-user order."""
