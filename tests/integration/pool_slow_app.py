"""An app module that takes far too long to import: the process pool must give up on it."""

from __future__ import annotations

import time

from faena import Faena

time.sleep(60)

app = Faena("pool-slow", broker="memory://")
