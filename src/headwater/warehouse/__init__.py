"""Warehouses: Segment's warehouse schema and the loaders that write it."""
