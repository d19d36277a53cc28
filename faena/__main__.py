"""``python -m faena``: the ``faena`` command."""

from faena.cli.main import main

if __name__ == "__main__":
    main()
