"""Composition layer: the Faena app, its settings, backend lookup by URL and result handles."""
