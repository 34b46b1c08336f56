"""Writes audit records to append-only JSONL segments with group commit.

Records from concurrent requests wait in one queue; everything queued is chained and written
as one batch, made durable with one fdatasync on a writer thread, and every request in the
batch is woken. Segments rotate by size and age; each starts with a `segment_start`
record chained to the last record of the previous one. Retention deletes whole old segments
and records that in the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from proxy.audit.chain import GENESIS, SCHEMA_VERSION, Chain
from proxy.audit.segments import (
    complete_size,
    first_record,
    last_record,
    list_segments,
    segment_name,
)
from proxy.policy.model import Audit

log = structlog.get_logger("sluice.audit")

# How often, at most, the chain's head (segment, seq, hash) is logged as `audit_head`; also
# once when the sink closes.
HEAD_EVERY_S = 60.0

Record = dict[str, Any]


class AuditCorrupt(Exception):
    """The log's last record cannot be read, so there is no hash to continue the chain from."""


class AuditUnavailable(Exception):
    """The record could not be made durable; the request it belongs to must not go out."""


@dataclass(frozen=True, slots=True)
class Staged:
    """A batch written but not yet durable: the chain state it leads to, its size, and the
    segments retention deletes once it is committed."""

    seq: int
    prev: str
    size: int
    retired: list[Path]


@dataclass(frozen=True, slots=True)
class SegmentLimits:
    max_bytes: int
    max_seconds: float
    retention_days: float | None
    fsync: bool

    @classmethod
    def of(cls, audit: Audit) -> SegmentLimits:
        return cls(
            audit.segment_max_bytes, audit.segment_max_seconds, audit.retention_days, audit.fsync
        )


class SegmentWriter:
    """The chain's state and the open segment. Used from one thread at a time only."""

    def __init__(self, directory: Path, chain: Chain, limits: SegmentLimits) -> None:
        self.directory = directory
        self.chain = chain
        self.limits = limits  # replaced whole on a policy reload
        self.seq = 0
        self.prev = GENESIS
        self._fd: int | None = None
        self._name: str | None = None  # the open segment, or the last one written
        self._number = 0
        self._size = 0
        self._opened_at = 0.0
        self._inode: tuple[int, int] | None = None
        self._path = ""  # of the open segment, as a string: stat'ed before every batch
        self._repaired: Record | None = None
        self._previous_name: str | None = None

    # --- startup ---------------------------------------------------------------------------

    def open(self) -> None:
        """Find where the chain ended, drop a torn tail left by a crash, start a new segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = list_segments(self.directory)
        while segments:
            number, path = segments[-1]
            fd = os.open(path, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                complete = complete_size(fd, size)
                if complete < size:
                    # A batch the crash cut short was never acknowledged: no request it
                    # belongs to went upstream. Say so in the chain rather than hide it.
                    os.ftruncate(fd, complete)
                    os.fsync(fd)
                    self._repaired = {"segment": path.name, "dropped_bytes": size - complete}
                    log.warning("audit_tail_repaired", segment=path.name, bytes=size - complete)
            finally:
                os.close(fd)
            self._number = number
            self._name = path.name
            if complete == 0:
                # Created, but its first batch never completed: nothing to chain from.
                path.unlink()
                segments.pop()
                continue
            last = last_record(path)
            if last is None or not isinstance(last.get("seq"), int) or "hash" not in last:
                # Never guess where the chain ended: refuse to start (no audit, no egress).
                raise AuditCorrupt(
                    f"the last record of {path} cannot be read; run `sluice audit verify`"
                )
            self.seq = last["seq"]
            self.prev = str(last["hash"])
            break
        self.write([])  # a fresh segment now, so an unwritable directory stops startup

    # --- writing ---------------------------------------------------------------------------

    def write(self, records: list[Record]) -> None:
        """Chain `records`, write them in one go and fsync, all or nothing (startup, tests,
        benchmarks; the sink runs the three steps itself)."""
        staged = self.stage(records)
        if staged is None:
            return
        try:
            self.sync()
        except BaseException:
            self.abandon()
            raise
        self.commit(staged)

    def stage(self, records: list[Record]) -> Staged | None:
        """Chain `records` and write them to the segment (the page cache), starting a new
        segment first when one is due. Nothing counts until `commit`; on failure the file is
        cut back and the next batch starts a new segment."""
        now = time.time()
        batch: list[Record] = []
        retired: list[Path] = []
        if self._fd is None or not self._still_ours() or self._due(now):
            self._start_segment(now)
            batch.append(self._segment_start(now))
            retention, retired = self._retention(now)
            if retention is not None:
                batch.append(retention)
        batch.extend(records)
        if not batch:
            return None
        seq, prev = self.seq, self.prev
        lines = bytearray()
        for record in batch:
            seq += 1
            record["v"] = SCHEMA_VERSION
            record["seq"] = seq
            record["prev"] = prev
            line, prev = self.chain.seal(record)
            lines += line
        assert self._fd is not None
        try:
            view = memoryview(lines)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            self.abandon()
            raise
        return Staged(seq, prev, len(lines), retired)

    def sync(self) -> None:
        """Make the staged bytes durable (the slow part: on the writer thread)."""
        if self.limits.fsync and self._fd is not None:
            os.fdatasync(self._fd)

    def commit(self, staged: Staged) -> None:
        self.seq, self.prev = staged.seq, staged.prev
        self._size += staged.size
        self._repaired = None
        for path in staged.retired:
            self._delete(path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def segment(self) -> str | None:
        """The segment the last committed record is in (or the open one)."""
        return self._name

    def _still_ours(self) -> bool:
        """Whether the open file is still the segment at its path. A directory replaced or
        removed under a running gateway must stop requests, not swallow their records."""
        try:
            st = os.stat(self._path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._inode

    def _due(self, now: float) -> bool:
        limits = self.limits
        return self._size >= limits.max_bytes or now - self._opened_at >= limits.max_seconds

    def _start_segment(self, now: float) -> None:
        self.close()
        if not stat.S_ISDIR(os.stat(self.directory).st_mode):
            raise NotADirectoryError(str(self.directory))
        existing = list_segments(self.directory)
        number = max(self._number, existing[-1][0] if existing else 0) + 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        while True:
            name = segment_name(number)
            try:
                fd = os.open(self.directory / name, flags, 0o640)
                break
            except FileExistsError:
                number += 1
        self._previous_name = self._name
        self._fd, self._name, self._number = fd, name, number
        self._path = os.fspath(self.directory / name)
        self._size = 0
        self._opened_at = now
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)
        self._sync_directory()

    def _segment_start(self, now: float) -> Record:
        record: Record = {
            "kind": "segment_start",
            "ts": now,
            "request_id": None,
            "segment": self._name,
            "previous_segment": self._previous_name,
            "keyed": self.chain.keyed,
        }
        if self._repaired is not None:
            record["repaired"] = self._repaired
        return record

    def abandon(self) -> None:
        """Cut the file back to its last acknowledged byte; the next batch starts afresh."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, self._size)
            if self._size == 0 and self._name is not None:
                os.unlink(self.directory / self._name)
                self._name, self._number = self._previous_name, self._number - 1
        except OSError:
            pass
        finally:
            os.close(fd)

    def _sync_directory(self) -> None:
        if not self.limits.fsync:
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- retention -------------------------------------------------------------------------

    def _retention(self, now: float) -> tuple[Record | None, list[Path]]:
        """Old whole segments to delete once the record saying so is durable, oldest first,
        never leaving a hole: the first segment young enough stops the sweep."""
        days = self.limits.retention_days
        if days is None:
            return None, []
        cutoff = now - days * 86400
        deleted: list[Record] = []
        paths: list[Path] = []
        for _number, path in list_segments(self.directory):
            if path.name == self._name:
                break
            first, last = first_record(path), last_record(path)
            if first is None or last is None or float(last["ts"]) >= cutoff:
                break
            deleted.append(
                {
                    "segment": path.name,
                    "first_seq": first["seq"],
                    "last_seq": last["seq"],
                    "last_hash": last["hash"],
                    "last_ts": last["ts"],
                }
            )
            paths.append(path)
        if not deleted:
            return None, []
        record: Record = {
            "kind": "retention",
            "ts": now,
            "request_id": None,
            "retention_days": days,
            "deleted": deleted,
        }
        return record, paths

    def _delete(self, path: Path) -> None:
        try:
            path.unlink()
        except OSError as exc:
            log.error("audit_retention_failed", segment=path.name, error_type=type(exc).__name__)
            return
        log.info("audit_segment_deleted", segment=path.name)
        self._sync_directory()


Builder = Callable[[], list[Record]]


class AuditSink:
    """The event loop's side of the writer: queue records, group them, await durability.

    Two ways in: `submit` (records with a future, for what must be durable before the request
    goes on) and `defer` (a function that builds records when the batch is written, for what
    only has to be written eventually, such as response records; no task per request).
    """

    def __init__(
        self,
        writer: SegmentWriter,
        *,
        timeout: float = 10.0,
        linger: float = 0.05,
        head_every: float = HEAD_EVERY_S,
    ) -> None:
        self._writer = writer
        self._timeout = timeout
        # Records nobody waits for ride along with the next batch someone waits for, up to
        # this long: fewer disk syncs and thread hand-offs per request under load.
        self._linger = linger
        self._wakeup = asyncio.Event()
        self._closing = False
        self._thread = WriterThread()
        self._pending: list[list[Record] | Builder] = []
        # One future for everything queued since the last batch was taken: every request in
        # a batch awaits the same one, resolved by a single call.
        self._durable: asyncio.Future[None] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._stuck: asyncio.Future[None] | None = None  # a write that outlived the timeout
        self.batches = 0  # group commits done, for benchmarks and tests
        self.records = 0
        # The chain's head goes to the operational log now and then: shipped elsewhere, those
        # lines are anchors `sluice audit verify --anchors` checks, which the chain alone
        # cannot be for its own end.
        self._head_every = head_every
        self._next_head = 0.0

    @classmethod
    async def open(cls, directory: Path, chain: Chain, audit: Audit) -> AuditSink:
        sink = cls(SegmentWriter(directory, chain, SegmentLimits.of(audit)))
        try:
            await sink._thread.run(sink._writer.open)
        except BaseException:
            sink._thread.stop()
            raise
        return sink

    @property
    def directory(self) -> Path:
        return self._writer.directory

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        return not self._pending and self._flushing is None

    def configure(self, audit: Audit) -> None:
        """Segment limits, retention and fsync from a reloaded policy (the directory stays)."""
        self._writer.limits = SegmentLimits.of(audit)

    def submit(self, records: list[Record]) -> asyncio.Future[None]:
        """Queue `records` (in order, after everything queued before); the future is done
        when they are durable, or fails with `AuditUnavailable`. Records queued together
        share one future."""
        future = self._durable
        if future is None:
            future = self._durable = asyncio.get_running_loop().create_future()
            self._wakeup.set()
        self._queue(records)
        return future

    def defer(self, build: Builder) -> None:
        """Queue records that `build` makes when their batch is written. Failures are logged;
        nobody waits."""
        self._queue(build)

    def _queue(self, item: list[Record] | Builder) -> None:
        self._pending.append(item)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def append(self, records: list[Record]) -> None:
        """Queue `records` and wait until they are durable."""
        await self.wait(self.submit(records))

    async def wait(self, future: asyncio.Future[None]) -> None:
        """Wait for submitted records to be durable; raises `AuditUnavailable`. Cancelling
        the waiter does not take the records back."""
        await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                if not self._closing and self._durable is None:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._linger):
                            await self._wakeup.wait()
                # One more turn of the loop first: whatever is already runnable (requests
                # reaching egress in the same turn) joins this batch instead of needing
                # the next fsync and thread round trip.
                await asyncio.sleep(0)
                batch, self._pending = self._pending, []
                future, self._durable = self._durable, None
                records: list[Record] = []
                for item in batch:
                    if isinstance(item, list):
                        records.extend(item)
                        continue
                    try:
                        records.extend(item())
                    except Exception as exc:
                        log.error("audit_record_failed", error_type=type(exc).__name__)
                try:
                    await self._write(records, future)
                except Exception as exc:
                    log.error(
                        "audit_write_failed",
                        directory=str(self._writer.directory),
                        error_type=type(exc).__name__,
                        records=len(records),
                    )
                    if future is not None and not future.done():
                        future.set_exception(
                            AuditUnavailable(
                                f"the audit log cannot be written ({type(exc).__name__})"
                            )
                        )
                        future.exception()  # callers that went away leave no warning
                    continue
                self.batches += 1
                self.records += len(records)
                if future is not None and not future.done():
                    future.set_result(None)
                if time.monotonic() >= self._next_head:
                    self._log_head()
        finally:
            self._flushing = None

    def _log_head(self) -> None:
        writer = self._writer
        self._next_head = time.monotonic() + self._head_every
        if writer.seq:
            log.info("audit_head", segment=writer.segment, seq=writer.seq, hash=writer.prev)

    async def _write(self, records: list[Record], durable: asyncio.Future[None] | None) -> None:
        """One group commit: chain and write on the event loop (CPU work and a page-cache
        write, cheaper here than handing the GIL back and forth), fsync on the writer thread,
        within the time limit. A sync that hangs (a dead network disk) fails its batch and
        every batch after it until it returns.

        `durable` is resolved in the very callback that brings the sync's outcome back to the
        loop, a turn before this coroutine resumes: the requests waiting for it go on sooner."""
        writer = self._writer
        if self._stuck is not None:
            if not self._stuck.done():
                raise AuditUnavailable("an earlier audit write has not returned")
            self._stuck = None
            writer.abandon()
        staged = writer.stage(records)
        if staged is None:
            return
        if not writer.limits.fsync:
            writer.commit(staged)
            return
        flight = _Flight()

        def synced() -> None:
            if flight.expired:  # timed out or cancelled: the batch counts as failed
                return
            flight.committed = True
            writer.commit(staged)
            if durable is not None and not durable.done():
                durable.set_result(None)

        job = self._thread.run(writer.sync, then=synced)
        # Give up the GIL and the CPU for a moment so the writer thread, just woken, can take
        # the GIL and enter fdatasync now rather than when the loop next blocks (measured:
        # 0.25 ms from hand-off to the start of the sync under load, 0.05 ms with this).
        os.sched_yield()
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(job)
        except TimeoutError:
            if flight.committed:  # the sync returned in time; only this coroutine was late
                return
            flight.expired = True
            self._stuck = job
            job.add_done_callback(_consume)
            raise
        except BaseException:
            flight.expired = True
            writer.abandon()
            raise

    async def close(self) -> None:
        """Write what is queued, close the segment, stop the writer thread."""
        self._closing = True
        self._wakeup.set()
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        self._log_head()
        try:
            await self._thread.run(self._writer.close)
        finally:
            self._thread.stop()


@dataclass(slots=True)
class _Flight:
    """A batch whose sync is on the writer thread: whether it was committed when the sync
    returned, or given up (timed out, cancelled) before that."""

    committed: bool = False
    expired: bool = False


_Job = tuple[Callable[[], None], "asyncio.Future[None]", Callable[[], None] | None]


class WriterThread:
    """One thread for the writer's blocking calls (fdatasync, opening and closing segments).

    Leaner than a ThreadPoolExecutor per batch: a C queue to hand the call over, and one
    `call_soon_threadsafe` to hand its outcome back, instead of a concurrent future, a work
    item, a condition variable and a chained asyncio future."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sluice-audit", daemon=True)
        self._thread.start()

    def run(
        self, call: Callable[[], None], then: Callable[[], None] | None = None
    ) -> asyncio.Future[None]:
        """Run `call` on the thread; the future is done when it has returned. `then` runs on
        the loop as soon as `call` has returned without an error, before the future is done
        (and so before anything awaiting it resumes)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.put((call, future, then))
        return future

    def stop(self) -> None:
        """Let the thread end after the calls queued so far; does not wait for them."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future, then = job
            error: BaseException | None = None
            try:
                call()
            except BaseException as exc:  # handed to the loop, which decides
                error = exc
            # RuntimeError: the loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_settle, future, error, then)


def _settle(
    future: asyncio.Future[None], error: BaseException | None, then: Callable[[], None] | None
) -> None:
    if error is None and then is not None:
        try:
            then()
        except Exception as exc:
            error = exc
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _consume(job: asyncio.Future[None]) -> None:
    if not job.cancelled():
        job.exception()
