"""A lean Redis connection for the rate limiter's hot path: commands from every request are
pipelined on one socket and replies matched in order (RESP2).

Built for CPU per request, which is what limits a gateway on one core: an asyncio protocol
parses replies as the bytes arrive (no reader task, no stream wake-ups), commands wait while
one write's replies are outstanding and then leave together (under load one system call and one
read carry many requests' commands; idle, a command leaves at the end of the loop's turn, or,
when nobody awaits its reply, with the next one that somebody does), and one timer per
connection enforces the timeout instead of one per call. Errors are redis-py's exception types,
so callers handle one family.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = Any  # bytes | int | list[Reply] | None | ResponseError
# How long a command nobody waits for (a settle) may wait for company before it is written.
_LINGER_S = 0.001


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode(*parts: str | bytes | int | float) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, bytes):
            data = part
        elif isinstance(part, float):
            data = repr(part).encode()
        else:
            data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


Answered = Callable[[list[Reply] | Exception], None]


class _Pending:
    """The replies one submitted batch of commands is waiting for, and who is told: a future
    someone awaits, or a callback (its replies, or the error that lost them)."""

    __slots__ = ("deadline", "future", "missing", "replies", "then")

    def __init__(
        self,
        future: asyncio.Future[list[Reply]] | None,
        then: Answered | None,
        size: int,
        deadline: float,
    ) -> None:
        self.future = future
        self.then = then
        self.missing = size
        self.replies: list[Reply] = []
        self.deadline = deadline

    def resolve(self, outcome: list[Reply] | Exception) -> None:
        if self.then is not None:
            self.then(outcome)
        elif self.future is not None and not self.future.done():  # its caller may be gone
            if isinstance(outcome, Exception):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)


class _Protocol(asyncio.Protocol):
    """Hands every complete reply to the connection, in order."""

    def __init__(self, connection: RespConnection) -> None:
        self._connection = connection
        self._buffer = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._connection._transport is not self._transport:
            return  # a socket the connection already gave up on
        buffer = self._buffer + data if self._buffer else data
        position, size = 0, len(buffer)
        answer = self._connection._answer
        try:
            while position < size:
                parsed = parse_reply(buffer, position)
                if parsed is None:
                    break
                reply, position = parsed
                answer(reply)
        except (ValueError, RedisConnectionError) as exc:
            self._connection._drop(RedisConnectionError(type(exc).__name__))
            return
        self._buffer = buffer[position:] if position < size else b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection._transport is self._transport:
            self._connection._drop(RedisConnectionError("Redis closed the connection"))


class RespConnection:
    """One connection, opened on first use and again after any failure."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = urlparse(url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._tls = parsed.scheme == "rediss"
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        path = parsed.path.lstrip("/")
        self._db = int(path) if path else 0
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[_Pending] = deque()
        self._outgoing: list[bytes] = []
        self._queued = 0  # replies the commands in `_outgoing` will get
        self._in_flight = 0  # replies still to come for commands written
        self._opening: asyncio.Lock | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one that opened the socket
        self._urgent = 0  # commands in `_outgoing` someone awaits (not only `send`s)
        self._flush_due = False  # a write is scheduled for the end of this turn of the loop
        self._linger: asyncio.TimerHandle | None = None  # a later write, for `send`s alone

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def call_many(self, commands: list[bytes]) -> list[Reply]:
        """Send encoded commands together; their replies, in order. ResponseError replies
        are returned, not raised, so one bad command does not hide the others' answers."""
        return await self.call(b"".join(commands), len(commands))

    async def call(self, payload: bytes, count: int) -> list[Reply]:
        """`count` commands encoded in `payload`: their replies, in order."""
        if self._transport is None:
            await self._open()
        return await self.submit(payload, count)

    def submit(self, payload: bytes, count: int) -> asyncio.Future[list[Reply]]:
        """Queue `count` encoded commands on the open connection; a future of their replies
        that fails with a redis-py error when Redis does not answer within the timeout."""
        if self._transport is None or self._loop is None:
            raise RedisConnectionError("not connected")
        future: asyncio.Future[list[Reply]] = self._loop.create_future()
        self._urgent += 1
        self._queue(payload, _Pending(future, None, count, self._loop.time() + self._timeout))
        return future

    def send(self, payload: bytes, count: int, then: Answered) -> None:
        """As `submit`, for commands nobody waits for: `then` is called with the replies, or
        with the redis-py error when Redis does not answer in time. No future, no task. They
        leave with the next command someone awaits, or within `_LINGER_S`: under load most
        ride along in another request's write instead of costing a write (and a Redis read)
        of their own."""
        if self._transport is None or self._loop is None:
            raise RedisConnectionError("not connected")
        self._queue(payload, _Pending(None, then, count, self._loop.time() + self._timeout))

    def _queue(self, payload: bytes, pending: _Pending) -> None:
        loop = self._loop
        assert loop is not None
        self._waiting.append(pending)
        self._outgoing.append(payload)
        self._queued += pending.missing
        if not self._in_flight:
            self._schedule(loop)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_deadlines)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing in flight: write at the end of this turn of the loop if someone waits for
        a reply, else a little later."""
        if self._flush_due:
            return
        if self._urgent:
            self._flush_due = True
            loop.call_soon(self._flush)
        elif self._linger is None:
            self._linger = loop.call_later(_LINGER_S, self._flush)

    def _flush(self) -> None:
        """Everything submitted since the last write, in one write. Called at the end of the
        event loop's turn when nothing is in flight, else when the last reply to what is in
        flight arrives: under load, one write and one read carry many requests' commands,
        and each command still waits for one round trip (plus, at most, the one before it)."""
        self._flush_due = False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and outgoing:
            self._in_flight += self._queued
            self._queued = self._urgent = 0
            self._transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if not self._waiting or self._loop is None:
            return
        loop = self._loop
        late = self._waiting[0].deadline - loop.time()
        if late <= 0:
            # Replies to what was sent may still come; this socket's order can't be trusted.
            self._drop(RedisTimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = loop.call_later(late, self._check_deadlines)

    def _answer(self, reply: Reply) -> None:
        if not self._waiting:
            raise RedisConnectionError("a reply nobody asked for")
        pending = self._waiting[0]
        pending.replies.append(reply)
        pending.missing -= 1
        if pending.missing == 0:
            self._waiting.popleft()
            pending.resolve(pending.replies)
        self._in_flight -= 1
        if not self._in_flight and self._outgoing:
            if self._urgent:
                self._flush()
            elif self._loop is not None:
                self._schedule(self._loop)

    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        try:
            async with asyncio.timeout(self._timeout), self._opening:
                if self._transport is None:
                    await self._connect()
        except TimeoutError:
            self._drop(RedisTimeoutError("Redis did not answer in time"))
            raise RedisTimeoutError("Redis did not answer in time") from None
        except OSError as exc:
            self._drop(RedisConnectionError(type(exc).__name__))
            raise RedisConnectionError(type(exc).__name__) from None

    async def _connect(self) -> None:
        context = ssl.create_default_context() if self._tls else None
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(
            lambda: _Protocol(self), self._host, self._port, ssl=context
        )
        self._transport = transport  # no isinstance check: uvloop's are not asyncio.Transport
        self._loop = loop
        setup: list[bytes] = []
        if self._password is not None:
            if self._username:
                setup.append(encode("AUTH", self._username, self._password))
            else:
                setup.append(encode("AUTH", self._password))
        if self._db:
            setup.append(encode("SELECT", self._db))
        if setup:
            replies = await self.submit(b"".join(setup), len(setup))
            if any(isinstance(reply, ResponseError) for reply in replies):
                self._drop(RedisConnectionError("Redis refused the connection setup"))
                raise RedisConnectionError("Redis refused the connection setup")

    def _drop(self, error: Exception) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        for timer in (self._watchdog, self._linger):
            if timer is not None:
                timer.cancel()
        self._watchdog = self._linger = None
        self._outgoing = []
        self._queued = self._in_flight = self._urgent = 0
        waiting, self._waiting = self._waiting, deque()
        for pending in waiting:
            pending.resolve(error)

    async def close(self) -> None:
        """Let what was submitted reach Redis and be answered (briefly), then close."""
        if self._waiting and self._transport is not None:
            # Replies come in order: once this one is in, so are all before it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.submit(encode("PING"), 1), self._timeout)
        self._drop(RedisConnectionError("closed"))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)  # let the transport finish closing


def parse_reply(buffer: bytes, position: int) -> tuple[Reply, int] | None:
    """The RESP2 reply starting at `position` and where the next begins; None if incomplete."""
    end = buffer.find(b"\r\n", position)
    if end < 0:
        return None
    kind = buffer[position]
    after = end + 2
    if kind == 36:  # $
        size = int(buffer[position + 1 : end])
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None
        return buffer[after : after + size], after + size + 2
    if kind == 58:  # :
        return int(buffer[position + 1 : end]), after
    if kind == 43:  # +
        return buffer[position + 1 : end], after
    if kind == 42:  # *
        count = int(buffer[position + 1 : end])
        if count < 0:
            return None, after
        items: list[Reply] = []
        for _ in range(count):
            parsed = parse_reply(buffer, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    if kind == 45:  # -
        message = buffer[position + 1 : end].decode("utf-8", "replace")
        error = NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
        return error, after
    raise ValueError("not a RESP reply")
