"""API keys: who may call the API, and with which scopes (docs/api.md, "Keys, limits and CORS").

Keys come from ``LASS_API_KEYS`` (comma-separated) and/or ``LASS_API_KEYS_FILE`` (one a
line). Each entry is a key, or its salted hash ``sha256:<salt>:<hex>`` where ``<hex>`` is
``sha256(salt + key)`` (``lass keys hash`` writes one), optionally followed by scopes
(``admin``). The file is re-read when its stat changes (checked on each request: one
``stat`` call) and on SIGHUP; a file that vanished or no longer parses keeps the keys last
read (and logs why), so a half-written file never locks everyone out or lets everyone in.

A request presents its key as ``Authorization: Bearer <key>`` (what the ``openai`` client
sends) or ``X-API-Key``; a WebSocket upgrade may also put it in ``?api_key=`` because
browsers cannot set headers on one. Keys are compared as SHA-256 digests with
``hmac.compare_digest`` against every entry, so neither the key's length nor which entry
matched shows in the time taken. No raw key is ever logged or used as a metric label:
:class:`Principal` carries a short hash (``key-3f2a``) for logs and a full digest for the
rate limiter, and :class:`RedactKeysFilter` strips ``api_key=`` from uvicorn's log lines.

With no keys configured every caller is a :class:`Principal` named after its address and
holds every scope, so everything works as without this module.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.context import AppContext, get_context
from service.errors import ApiError

log = logging.getLogger("lass.service")

ADMIN = "admin"
SCOPES = frozenset({ADMIN})
HASH_PREFIX = "sha256:"


class KeyFileError(ValueError):
    """A key entry that cannot be used (the message names where it is, never the key)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``name`` for logs (``key-3f2a``, or the client address with keys
    off), ``bucket`` the rate limiter's identity (a digest, never the key) and scopes."""

    name: str
    bucket: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes


@dataclass(frozen=True)
class Refusal:
    """A request turned away before any work: the HTTP status and error of the REST answer,
    the reason counted in ``lass_rejected_requests``, and for 429s the seconds to wait."""

    status: int
    code: str
    reason: str
    message: str
    type: str = "invalid_request_error"
    retry_after: int | None = None

    def api_error(self) -> ApiError:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="lass"'
        return ApiError(self.status, self.message, type=self.type, code=self.code, headers=headers)


def _digest(data: str) -> bytes:
    return hashlib.sha256(data.encode()).digest()


def hash_key(key: str, salt: str | None = None) -> str:
    """``sha256:<salt>:<hex>`` for ``key``: what a keys file may hold instead of the key.
    ``<hex>`` is ``sha256(salt + key)``, so ``printf %s "$salt$key" | sha256sum`` agrees."""
    check_key_text(key, "the key")
    salt = salt if salt is not None else secrets.token_hex(8)
    if not re.fullmatch(r"[0-9A-Za-z]+", salt):
        raise KeyFileError("a salt is letters and digits only")
    return f"{HASH_PREFIX}{salt}:{hashlib.sha256((salt + key).encode()).hexdigest()}"


def check_key_text(key: str, where: str) -> None:
    """Keys are printable ASCII without spaces or commas (they travel in headers, URLs and a
    comma-separated variable); at least 8 characters so a typo'd short value is not a key."""
    if len(key) < 8 or not re.fullmatch(r"[!-~]+", key) or "," in key:
        raise KeyFileError(
            f"{where}: a key is at least 8 printable ASCII characters without spaces or commas"
        )


@dataclass(frozen=True)
class _Entry:
    """One configured key. ``digest`` is sha256(key) for a plain key, or the stored
    sha256(salt + key) for a hashed one (``salt`` set)."""

    digest: bytes
    salt: str | None
    scopes: frozenset[str]

    @property
    def principal(self) -> Principal:
        # The id derives from the stored form, so a hashed entry's id reveals nothing more
        # than the hash already in the file; 4 hex digits are enough to tell keys apart in
        # a log, and far too few to search for a key.
        ident = hashlib.sha256(b"lass-key-id:" + self.digest).hexdigest()
        return Principal(f"key-{ident[:4]}", f"key:{ident}", self.scopes)


def parse_entry(text: str, where: str) -> _Entry:
    """One entry: ``<key or sha256:salt:hex> [scope ...]``."""
    key, *scopes = text.split()
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise KeyFileError(
            f"{where}: unknown scope {unknown[0]!r} (scopes: {', '.join(sorted(SCOPES))})"
        )
    if key.startswith(HASH_PREFIX):
        match = re.fullmatch(r"sha256:([0-9A-Za-z]+):([0-9a-fA-F]{64})", key)
        if match is None:
            raise KeyFileError(f"{where}: a hashed key is sha256:<salt>:<64 hex digits>")
        return _Entry(bytes.fromhex(match[2]), match[1], frozenset(scopes))
    check_key_text(key, where)
    return _Entry(_digest(key), None, frozenset(scopes))


def parse_entries(lines: Iterable[str], source: str) -> list[_Entry]:
    """Entries of a keys file's lines (blank lines and ``#`` comments skipped)."""
    out = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(parse_entry(text, f"{source} line {number}"))
    return out


class KeyStore:
    """The configured keys; :meth:`authenticate` finds the principal of a presented key."""

    def __init__(self, keys: str = "", path: Path | None = None) -> None:
        self.path = path
        self._static = [
            parse_entry(item.strip(), f"LASS_API_KEYS entry {i}")
            for i, item in enumerate(keys.split(","), 1)
            if item.strip()
        ]
        self.enabled = bool(self._static) or path is not None
        self._from_file: list[_Entry] = []
        self._stat: tuple[int, ...] | None = None
        self._failed = False
        self._failed_stat: tuple[int, ...] | None = None
        if path is not None:
            self._stat = self._stat_of(path)
            try:
                text = path.read_text()
            except OSError as exc:
                raise KeyFileError(f"LASS_API_KEYS_FILE {path}: {exc.strerror}") from None
            self._from_file = parse_entries(text.splitlines(), f"LASS_API_KEYS_FILE {path}")

    @property
    def count(self) -> int:
        return len(self._static) + len(self._from_file)

    @staticmethod
    def _stat_of(path: Path) -> tuple[int, ...] | None:
        # ctime and inode as well as mtime and size: an in-place rewrite within the mtime's
        # granularity, or an atomic rename (Kubernetes swaps a secret's symlink), still shows.
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def reload(self, why: str = "changed") -> bool:
        """Re-read the file; on failure keep the keys already loaded. True when re-read."""
        if self.path is None:
            return False
        # The stat before the read: a change while reading shows as a new stat next time.
        stat = self._stat_of(self.path)
        try:
            entries = parse_entries(
                self.path.read_text().splitlines(), f"LASS_API_KEYS_FILE {self.path}"
            )
        except (OSError, KeyFileError) as exc:
            if not (self._failed and stat == self._failed_stat):  # each bad version once
                detail = exc.strerror if isinstance(exc, OSError) else str(exc)
                log.error(
                    "API keys file %s not reloaded (%s); keeping the %d keys in use",
                    self.path,
                    detail,
                    self.count,
                )
            self._failed, self._failed_stat = True, stat
            return False
        self._from_file, self._stat, self._failed = entries, stat, False
        log.info("API keys file %s reloaded (%s): %d keys", self.path, why, self.count)
        return True

    def refresh(self) -> None:
        """Reload the file if its stat changed since it was read (one ``stat`` call)."""
        if self.path is None:
            return
        stat = self._stat_of(self.path)
        if stat == self._stat or (self._failed and stat == self._failed_stat):
            return
        self.reload()

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal of ``presented``, or None when it is missing or matches no entry."""
        self.refresh()
        if not presented:
            return None
        plain = _digest(presented)
        found: _Entry | None = None
        # Every entry is compared, matched or not, so the time does not say which matched.
        for entry in (*self._static, *self._from_file):
            digest = plain if entry.salt is None else _digest(entry.salt + presented)
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found.principal if found is not None else None


def presented_key(connection: HTTPConnection, websocket: bool = False) -> str | None:
    """The key a request carries: ``Authorization: Bearer``, ``X-API-Key``, and for a
    WebSocket upgrade also ``?api_key=`` (browsers cannot set headers there)."""
    authorization = connection.headers.get("authorization", "")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = connection.headers.get("x-api-key", "").strip()
    if key:
        return key
    if websocket:
        return connection.query_params.get("api_key") or None
    return None


def anonymous(connection: HTTPConnection) -> Principal:
    """With keys off: the caller is its address (rate limits apply per address)."""
    host = connection.client.host if connection.client else "unknown"
    return Principal(host, f"addr:{host}", SCOPES)


def identify(
    connection: HTTPConnection, ctx: AppContext, websocket: bool = False
) -> Principal | Refusal:
    """The caller's principal, or the 401 :class:`Refusal` (counted in metrics)."""
    keys = ctx.keys
    if not keys.enabled:
        return anonymous(connection)
    presented = presented_key(connection, websocket)
    principal = keys.authenticate(presented)
    if principal is not None:
        return principal
    ctx.metrics.reject("invalid_api_key")
    where = " (or ?api_key=<key> on a WebSocket)" if websocket else ""
    message = (
        "Incorrect API key provided."
        if presented
        else f"Missing API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        f"{where}."
    )
    return Refusal(401, "invalid_api_key", "invalid_api_key", message)


async def authorize(
    connection: HTTPConnection, ctx: AppContext = Depends(get_context)
) -> Principal:
    """FastAPI dependency of every guarded HTTP route: a valid key (401 otherwise) and a
    request token from the caller's bucket (429 otherwise). ``async`` so that it runs on
    the event loop, where the buckets live, not in a worker thread."""
    principal = identify(connection, ctx)
    if isinstance(principal, Refusal):
        raise principal.api_error()
    refusal = ctx.limits.take_request(principal.bucket)
    if refusal is not None:
        ctx.metrics.reject(refusal.reason)
        log.debug("%s refused: %s", principal.name, refusal.reason)
        raise refusal.api_error()
    return principal


async def require_admin(
    principal: Principal = Depends(authorize), ctx: AppContext = Depends(get_context)
) -> Principal:
    """FastAPI dependency of routes that change what the server serves (such as adding or
    removing languages): a key with the ``admin`` scope, 403 otherwise. With keys off
    every caller holds every scope."""
    if not principal.admin:
        ctx.metrics.reject("admin_required")
        raise ApiError(
            403,
            "this operation needs a key with the 'admin' scope",
            code="insufficient_permissions",
        )
    return principal


_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']+")


class RedactKeysFilter(logging.Filter):
    """Replaces ``api_key=<key>`` in a log record with ``api_key=[redacted]``: uvicorn logs
    every WebSocket upgrade's path with its query string, and the web page sends its key
    there. Arguments are redacted in place so uvicorn's access formatter still gets its
    tuple."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "api_key=" in record.msg:
            record.msg = _KEY_IN_URL.sub(r"\1[redacted]", record.msg)
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and "api_key=" in a for a in record.args
        ):
            record.args = tuple(
                _KEY_IN_URL.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def install_log_redaction() -> None:
    """Put :class:`RedactKeysFilter` on uvicorn's loggers (once)."""
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeysFilter) for f in logger.filters):
            logger.addFilter(RedactKeysFilter())
