"""The ``faena`` command line: ``faena worker``, ``status``, ``purge``, ``dlq`` and ``demo``.

This is the adapters layer: it may import anything in the package, and nothing in the package
imports it. :data:`faena.cli.main.cli` is the one click group every entry point shares
(``faena``, ``python -m faena``, and later ``manage.py faena``).
"""
