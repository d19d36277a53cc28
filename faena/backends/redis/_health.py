"""What a worker should warn about when it connects to a Redis server.

Two settings decide whether Redis can lose faena's data behind everyone's back:

- ``maxmemory-policy``: any policy but ``noeviction`` lets Redis delete keys when memory is
  full — queued messages, leases and results included, without an error to anyone.
- persistence: with neither AOF nor RDB snapshots, a restart empties the server; with snapshots
  only, a restart loses what changed since the last one; AOF with ``appendfsync everysec``
  loses up to about a second of writes on a crash of the machine, ``always`` none.

``CONFIG`` may be renamed or forbidden on managed services; then ``INFO`` answers what it can
and the rest is not guessed at. When ``INFO`` is refused too (an ACL user without
``@dangerous``), the only warning says that nothing could be checked: the check is advice, and
a worker that may not run it can still do its work.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio.cluster
import redis.exceptions

from faena.backends.redis._client import AsyncClient, Target


async def server_warnings(client: AsyncClient, target: Target) -> list[str]:
    """Plain-words warnings about ``target``'s eviction policy and persistence.

    On a cluster every primary is asked, and each warning names its node.
    """
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        found: list[str] = []
        for node in client.get_primaries():
            where = f"Redis node {node.name} of {target.display}"
            try:
                info = await client.info("all", target_nodes=node)
            except redis.exceptions.ResponseError as exc:
                found.append(_unchecked(where, exc))
                continue
            found += _warnings_for(info, await _save_rules(client, node), where)
        return found
    where = f"Redis at {target.display}"
    try:
        info = await client.info("all")
    except redis.exceptions.ResponseError as exc:  # NOPERM, or INFO renamed away
        return [_unchecked(where, exc)]
    return _warnings_for(info, await _save_rules(client, None), where)


def _unchecked(where: str, exc: Exception) -> str:
    return (
        f"{where} refused INFO ({exc}), so its eviction policy and persistence were not "
        "checked: make sure it has maxmemory-policy noeviction and appendonly yes"
    )


def _warnings_for(info: dict[str, Any], snapshots: str | None, where: str) -> list[str]:
    policy = str(info.get("maxmemory_policy", "") or "")
    warnings: list[str] = []
    if policy and policy != "noeviction":
        warnings.append(
            f"{where} evicts keys when its memory is full (maxmemory-policy {policy}): queued "
            "messages, leases and results can then vanish without an error. Set "
            "maxmemory-policy noeviction."
        )
    aof = str(info.get("aof_enabled", "0")) == "1"
    if not aof and snapshots == "":
        warnings.append(
            f"{where} keeps nothing on disk (no AOF, no RDB snapshots): a restart of Redis loses "
            "every queued message and every stored result. Set appendonly yes (appendfsync "
            "everysec loses at most about a second of writes on a crash; always loses none)."
        )
    elif not aof and snapshots:
        warnings.append(
            f"{where} persists only by RDB snapshots (save {snapshots}): a restart of Redis "
            "loses what was enqueued or finished since the last snapshot. Set appendonly yes to "
            "keep every acknowledged enqueue."
        )
    return warnings


async def _save_rules(client: AsyncClient, node: Any) -> str | None:
    """The ``save`` setting ("" when snapshots are off), or ``None`` if CONFIG is refused."""
    try:
        if node is None:
            reply = await client.config_get("save")
        else:
            reply = await client.config_get("save", target_nodes=node)
    except Exception:  # renamed or forbidden on managed services: do not guess
        return None
    return str(reply.get("save", "") or "").strip()
