"""Engines layer: the worker, its pools and its logging."""
