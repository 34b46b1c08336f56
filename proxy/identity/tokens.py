"""Personal tokens: issued by `sluice token issue`, stored only as a hash, revocable.

The store is Redis when `REDIS_URL` is set (shared by every replica) and a local SQLite file
otherwise. Replicas remember a lookup for at most a second, so a revocation is seen within one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import sqlite3
import string
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from proxy.context import Principal

TOKEN_PREFIX = "slc_"
_ALPHABET = string.ascii_letters + string.digits
_SECRET_LENGTH = 40  # about 238 bits
TOKEN_PATTERN = re.compile(r"\bslc_[A-Za-z0-9]{40}\b")
LOOKUP_CACHE_SECONDS = 1.0
_CACHE_LIMIT = 10_000
T = TypeVar("T")


class TokenStoreUnavailable(Exception):
    """The token store cannot be read; requests with personal tokens fail closed (503)."""


def new_token() -> str:
    """A fresh personal token: a recognisable prefix for secret scanners, then random text."""
    return TOKEN_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LENGTH))


def token_hash(token: str) -> str:
    # Tokens carry ~238 random bits, so a plain hash is as good as a slow one here.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store keeps about a token: never the token itself."""

    id: str
    subject: str
    roles: tuple[str, ...]
    models: tuple[str, ...] | None
    name: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None = None

    def usable_at(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> TokenRecord:
        data = json.loads(text)
        data["roles"] = tuple(data["roles"])
        if data["models"] is not None:
            data["models"] = tuple(data["models"])
        return cls(**data)


def new_record(
    subject: str,
    roles: tuple[str, ...],
    *,
    ttl_seconds: float | None,
    models: tuple[str, ...] | None = None,
    name: str | None = None,
) -> TokenRecord:
    now = time.time()
    return TokenRecord(
        id="tok_" + secrets.token_hex(6),
        subject=subject,
        roles=roles,
        models=models,
        name=name,
        created_at=now,
        expires_at=None if ttl_seconds is None else now + ttl_seconds,
    )


class TokenStore(Protocol):
    async def add(self, digest: str, record: TokenRecord) -> None: ...
    async def find(self, digest: str) -> TokenRecord | None: ...
    async def revoke(self, token_id: str) -> TokenRecord | None: ...
    async def list(self, subject: str | None = None) -> list[TokenRecord]: ...
    async def close(self) -> None: ...


class LocalTokenStore:
    """A SQLite file: the embedded default for a single replica and the CLI beside it.

    One connection, used from one thread of its own, so the event loop never waits on disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-store")
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS tokens ("
                " digest TEXT PRIMARY KEY, id TEXT UNIQUE NOT NULL,"
                " subject TEXT NOT NULL, record TEXT NOT NULL)"
            )
            self._connection = connection
        return self._connection

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                connection = self._connect()
                with connection:
                    return work(connection)
            except sqlite3.Error as exc:
                raise TokenStoreUnavailable(type(exc).__name__) from None

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def add(self, digest: str, record: TokenRecord) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO tokens (digest, id, subject, record) VALUES (?, ?, ?, ?)",
                (digest, record.id, record.subject, record.to_json()),
            )

        await self._run(work)

    async def find(self, digest: str) -> TokenRecord | None:
        def work(db: sqlite3.Connection) -> TokenRecord | None:
            row = db.execute("SELECT record FROM tokens WHERE digest = ?", (digest,)).fetchone()
            return None if row is None else TokenRecord.from_json(row[0])

        return await self._run(work)

    async def revoke(self, token_id: str) -> TokenRecord | None:
        def work(db: sqlite3.Connection) -> TokenRecord | None:
            row = db.execute("SELECT record FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                return None
            record = TokenRecord.from_json(row[0])
            if record.revoked_at is None:
                record = replace(record, revoked_at=time.time())
                db.execute(
                    "UPDATE tokens SET record = ? WHERE id = ?", (record.to_json(), token_id)
                )
            return record

        return await self._run(work)

    async def list(self, subject: str | None = None) -> list[TokenRecord]:
        def work(db: sqlite3.Connection) -> list[TokenRecord]:
            if subject is None:
                rows = db.execute("SELECT record FROM tokens").fetchall()
            else:
                rows = db.execute(
                    "SELECT record FROM tokens WHERE subject = ?", (subject,)
                ).fetchall()
            return sorted((TokenRecord.from_json(r[0]) for r in rows), key=lambda r: r.created_at)

        return await self._run(work)

    async def close(self) -> None:
        def shut() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=False)


class RedisTokenStore:
    """Tokens in Redis, so every replica sees an issue or a revocation at once."""

    _RECORD = "sluice:token:{}"
    _BY_ID = "sluice:token-id:{}"

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, decode_responses=True
        )

    async def add(self, digest: str, record: TokenRecord) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._RECORD.format(digest), record.to_json())
                pipe.set(self._BY_ID.format(record.id), digest)
                if record.expires_at is not None:
                    # Expired tokens disappear a week after they stop working.
                    expire_at = int(record.expires_at) + 7 * 86400
                    pipe.expireat(self._RECORD.format(digest), expire_at)
                    pipe.expireat(self._BY_ID.format(record.id), expire_at)
                await pipe.execute()
        except RedisError as exc:
            raise TokenStoreUnavailable(type(exc).__name__) from None

    async def find(self, digest: str) -> TokenRecord | None:
        try:
            text = await self._redis.get(self._RECORD.format(digest))
        except RedisError as exc:
            raise TokenStoreUnavailable(type(exc).__name__) from None
        return None if text is None else TokenRecord.from_json(text)

    async def revoke(self, token_id: str) -> TokenRecord | None:
        try:
            digest = await self._redis.get(self._BY_ID.format(token_id))
            if digest is None:
                return None
            key = self._RECORD.format(digest)
            text = await self._redis.get(key)
            if text is None:
                return None
            record = TokenRecord.from_json(text)
            if record.revoked_at is None:
                record = replace(record, revoked_at=time.time())
                await self._redis.set(key, record.to_json(), keepttl=True)
            return record
        except RedisError as exc:
            raise TokenStoreUnavailable(type(exc).__name__) from None

    async def list(self, subject: str | None = None) -> list[TokenRecord]:
        try:
            digests = [
                d
                async for key in self._redis.scan_iter(match=self._BY_ID.format("*"))
                if (d := await self._redis.get(key)) is not None
            ]
            texts = await self._redis.mget([self._RECORD.format(d) for d in digests])
        except RedisError as exc:
            raise TokenStoreUnavailable(type(exc).__name__) from None
        records = [TokenRecord.from_json(t) for t in texts if t is not None]
        if subject is not None:
            records = [r for r in records if r.subject == subject]
        return sorted(records, key=lambda r: r.created_at)

    async def close(self) -> None:
        await self._redis.aclose()


def open_token_store(redis_url: str | None, data_dir: Path) -> TokenStore:
    """Redis when a URL is given, else the local file under `data_dir`."""
    if redis_url:
        return RedisTokenStore(redis_url)
    return LocalTokenStore(data_dir / "tokens.sqlite3")


class PersonalTokenVerifier:
    """Turns a personal token into a `Principal`, or None when it is unknown, expired or revoked."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store
        self._recent: dict[str, tuple[float, TokenRecord | None]] = {}
        self._lookups: dict[str, asyncio.Future[TokenRecord | None]] = {}

    async def authenticate(self, token: str) -> Principal | None:
        digest = token_hash(token)
        cached = self._recent.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            record = cached[1]
        else:
            record = await self._lookup(digest)
        if record is None or not record.usable_at(time.time()):
            return None
        return Principal(
            record.subject, record.roles, "token", token_id=record.id, models=record.models
        )

    async def _lookup(self, digest: str) -> TokenRecord | None:
        """One store lookup per token at a time: requests arriving meanwhile share it."""
        pending = self._lookups.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._store.find(digest))
            self._lookups[digest] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(digest, None))
        record = await asyncio.shield(pending)
        if len(self._recent) >= _CACHE_LIMIT:
            self._recent.pop(next(iter(self._recent)))
        self._recent[digest] = (time.monotonic() + LOOKUP_CACHE_SECONDS, record)
        return record
