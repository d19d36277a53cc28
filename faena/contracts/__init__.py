"""Contracts layer: the interfaces every backend and pool implements, and worker events."""
