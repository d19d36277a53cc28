"""faena against Celery, RQ, Dramatiq and arq on one private Redis server (see README.md)."""
