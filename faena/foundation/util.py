"""Small helpers with no faena knowledge: ids, text, dotted-path imports."""

from __future__ import annotations

import importlib
import os
import socket
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def new_id() -> str:
    """A new random job id: UUID4 text, like Celery's (built directly: ``uuid.uuid4()`` costs
    several times more, and bulk sends make one per message)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utf8_safe(text: str) -> str:
    """``text``, with anything UTF-8 cannot encode (lone surrogates, as in a file name that
    ``os.listdir`` decoded with ``surrogateescape``) turned into backslash escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def import_string(path: str) -> Any:
    """Import ``"pkg.module:attr"`` or ``"pkg.module.attr"`` and return the object.

    Raises:
        ImportError: the module or attribute does not exist, with the path in the message.
    """
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{path!r} is not a dotted path like 'package.module:attribute'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def worker_identity() -> str:
    """``hostname:pid``, the default worker id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def revoker_identity() -> str:
    """``user@hostname pid N``: who revoked a job, when the caller does not say."""
    import getpass  # here, not at the top: only a revoke without a name needs it

    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd)
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


_SECRET_PARAMETERS = frozenset({"password", "pass", "pwd", "secret", "token"})


def redacted(url: str) -> str:
    """``url`` with its password shown as ``***``, in its user part and in a ``password``
    query parameter alike (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in _SECRET_PARAMETERS for k, _ in pairs):
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_PARAMETERS else v) for k, v in pairs], safe="*"
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))
