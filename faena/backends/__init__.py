"""Backends layer: one module or folder per backend, each importing only its own driver."""
