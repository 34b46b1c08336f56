"""Runs classification in worker processes, never on the event loop.

Each worker has its own pipe: a request sends one message with the texts it needs classified
and the event loop is woken by the worker's reply, with no threads in between. The loop watches
each pipe for as long as its worker lives (one reader, not one per job), so a worker that dies
while idle is replaced at once, and a job costs the loop one timer, not two. A bounded number
of requests may wait for a worker; a worker that takes too long or dies fails its request
closed and is replaced by a fresh one, which loads the models first.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
import signal
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from proxy.classify.engine import Detector, DetectorConfig
from proxy.classify.findings import Finding

log = structlog.get_logger("sluice.classify")

# A new worker loads spaCy and the name lists (seconds on a busy machine) before it takes a
# request, within this limit rather than the policy's per-request one.
STARTUP_LIMIT_S = 60.0
# Detector configurations a worker keeps (policy reloads add one each); both ends of the pipe
# forget them all at once when one more arrives, so they agree on what the worker knows.
_CONFIGS_PER_WORKER = 8

# One finding as it crosses the pipe: (entity, start, end, score, detector).
_Row = tuple[str, int, int, float, str]
# Parent to worker: (config digest, the config if the worker has not seen it, texts); None stops.
_Job = tuple[str, DetectorConfig | None, list[str]]
# Worker to parent: ("ok", findings per text) or ("error", the exception's type name).
_Reply = tuple[str, Any]
# Both ends pickle plain tuples, strings and the config dataclass themselves: the standard
# pickler, not the one `Connection.send` builds per message for sockets and other resources.
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _serve(conn: Connection) -> None:
    """A worker's life: answer jobs until told to stop or the parent goes away."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    detectors: dict[str, Detector] = {}
    while True:
        try:
            job: _Job | None = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if job is None:
            return
        digest, config, texts = job
        try:
            if config is not None:
                if len(detectors) >= _CONFIGS_PER_WORKER:
                    detectors.clear()
                detectors[digest] = Detector(config)
            detector = detectors[digest]
            rows = [
                [(f.entity, f.start, f.end, f.score, f.detector) for f in detector.detect(text)]
                for text in texts
            ]
            reply: _Reply = ("ok", rows)
        except Exception as error:  # the parent fails the request closed; the worker lives on
            reply = ("error", type(error).__name__)
        conn.send_bytes(pickle.dumps(reply, _PROTOCOL))


class ClassifierUnavailable(Exception):
    """Classification could not be done; the request must not go out."""


class _WorkerLost(Exception):
    """The worker's end of the pipe closed: it died."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    fd: int  # the pipe's, kept so its reader can be removed before the pipe is closed
    configs: set[str] = field(default_factory=set)  # digests the worker has a detector for
    reply: asyncio.Future[_Reply] | None = None  # the job it is on, if any
    loop: asyncio.AbstractEventLoop | None = None  # whose reader watches the pipe
    expiry: asyncio.TimerHandle | None = None  # the job's next deadline
    job_deadline: float = 0.0  # the job's time limit runs out, in `loop.time()`


class ClassifierPool:
    def __init__(self, workers: int, queue_limit: int | None = None) -> None:
        self.workers = max(1, workers)
        # Enough for a burst of requests; beyond it, refuse (503) rather than queue without end.
        self.queue_limit = queue_limit or self.workers * 64
        self._pending = 0
        self._context = multiprocessing.get_context("spawn")
        self._live: list[_Worker] = []  # started, not yet discarded
        self._idle: list[_Worker] = []
        self._warming = 0  # new workers loading the models
        self._waiters: deque[asyncio.Future[_Worker]] = deque()
        self._config: DetectorConfig | None = None  # the last one used, to warm new workers
        self._tasks: set[asyncio.Task[None]] = set()  # warm-ups under way (kept from the GC)

    async def warm_up(self, config: DetectorConfig) -> None:
        """Load the models now, so the first request does not wait for them."""
        self._config = config
        self._start_workers()
        await asyncio.gather(
            *(self.detect(config, ["warm up"], STARTUP_LIMIT_S) for _ in range(self.workers))
        )

    async def detect(
        self, config: DetectorConfig, texts: Sequence[str], time_limit: float
    ) -> list[list[Finding]]:
        if self._pending >= self.queue_limit:
            raise ClassifierUnavailable("the classification queue is full")
        self._pending += 1
        self._config = config
        loop = asyncio.get_running_loop()
        try:
            self._start_workers()
            # One deadline for waiting and classifying; a worker still loading the models
            # gets the startup allowance on top.
            allowance = STARTUP_LIMIT_S if self._warming and not self._idle else 0.0
            deadline = loop.time() + time_limit + allowance
            worker = await self._acquire(deadline - loop.time())
            try:
                status, payload = await self._run(
                    worker, config, list(texts), time_limit, deadline - loop.time()
                )
            except TimeoutError:
                log.error("classification_timeout", time_limit_s=time_limit, texts=len(texts))
                raise ClassifierUnavailable("classification timed out") from None
            except _WorkerLost:
                log.error("classification_worker_died")
                self._discard(worker)
                raise ClassifierUnavailable("a classification worker died") from None
            if status != "ok":
                worker.configs.clear()  # the worker may not have built the detector
                log.error("classification_failed", error=payload)
                raise ClassifierUnavailable("classification failed")
            return [[Finding(*row) for row in rows] for rows in payload]
        finally:
            self._pending -= 1

    async def _acquire(self, limit: float) -> _Worker:
        if self._idle:
            return self._idle.pop()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(limit):
                return await waiter
        except TimeoutError:
            waiter.cancel()
            log.error("classification_queue_timeout", time_limit_s=limit)
            raise ClassifierUnavailable("no classification worker was free in time") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over just as this request was cancelled
            waiter.cancel()
            raise

    async def _run(
        self,
        worker: _Worker,
        config: DetectorConfig,
        texts: list[str],
        time_limit: float,
        wait_limit: float,
    ) -> _Reply:
        """Send one job and wait for its reply, at most `wait_limit`. The worker goes back to
        the pool when the reply arrives, even if nobody waits for it any more; a job that runs
        longer than `time_limit` ends its worker, whether anybody still waits or not."""
        loop = asyncio.get_running_loop()
        digest = config.digest
        if digest in worker.configs:
            job: _Job = (digest, None, texts)
        else:
            if len(worker.configs) >= _CONFIGS_PER_WORKER:
                worker.configs.clear()
            worker.configs.add(digest)
            job = (digest, config, texts)
        self._watch(worker, loop)
        try:
            worker.conn.send_bytes(pickle.dumps(job, _PROTOCOL))
        except (OSError, ValueError):
            raise _WorkerLost from None
        worker.reply = reply = loop.create_future()
        now = loop.time()
        worker.job_deadline = now + time_limit
        # One timer per job, at whichever deadline comes first.
        if wait_limit < time_limit:
            worker.expiry = loop.call_at(now + wait_limit, self._give_up, worker, reply)
        else:
            worker.expiry = loop.call_at(worker.job_deadline, self._expire, worker, reply)
        message: _Reply = await reply
        return message

    def _give_up(self, worker: _Worker, reply: asyncio.Future[_Reply]) -> None:
        """The request's own deadline passed before its job's: the request fails, and the job
        keeps its worker until the job's time limit."""
        if worker.reply is not reply or worker.loop is None:
            return
        if not reply.done():
            reply.set_exception(TimeoutError())
        worker.expiry = worker.loop.call_at(worker.job_deadline, self._expire, worker, reply)

    def _expire(self, worker: _Worker, reply: asyncio.Future[_Reply]) -> None:
        """The job ran out of time: a stuck worker cannot be trusted with the next one."""
        if worker.reply is not reply:
            return
        if not reply.done():
            reply.set_exception(TimeoutError())
        else:  # the request gave up already (its deadline, or cancelled)
            log.error("classification_timeout_unattended")
        self._discard(worker)

    def _watch(self, worker: _Worker, loop: asyncio.AbstractEventLoop) -> None:
        """Have `loop` watch the worker's pipe (once: the reader stays until the worker ends;
        tests run each on a loop of their own, so a pool may move to another loop)."""
        if worker.loop is loop:
            return
        self._unwatch(worker)
        loop.add_reader(worker.fd, self._on_readable, worker)
        worker.loop = loop

    def _unwatch(self, worker: _Worker) -> None:
        """Stop watching the pipe; before it is closed, or its number could come back for
        another file that the loop would then believe it watches already."""
        loop, worker.loop = worker.loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(worker.fd)

    def _on_readable(self, worker: _Worker) -> None:
        """The worker's pipe is readable: the reply to its job, or the end of a worker that
        died, on a job or idle."""
        if worker not in self._live:  # discarded or shut down already
            self._unwatch(worker)
            return
        reply = worker.reply
        if worker.expiry is not None:
            worker.expiry.cancel()
        worker.reply, worker.expiry = None, None
        try:
            message: _Reply = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._unwatch(worker)  # at end-of-file the pipe stays readable
            if reply is not None and not reply.done():
                reply.set_exception(_WorkerLost())  # its request replaces the worker
            else:  # idle, or nobody waits for its reply any more; still, replace it
                self._discard(worker)
            return
        if reply is None:  # a message nobody asked for: the worker cannot be trusted
            log.error("classification_unexpected_reply")
            self._discard(worker)
            return
        if not reply.done():
            reply.set_result(message)
        self._release(worker)

    def _release(self, worker: _Worker) -> None:
        if worker not in self._live:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _start_workers(self) -> None:
        """Bring the pool up to its size; new workers load the models before taking requests."""
        while len(self._live) < self.workers:
            parent_end, child_end = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=_serve, args=(child_end,), name="sluice-classify", daemon=True
            )
            process.start()
            child_end.close()  # so the parent sees end-of-file when the worker dies
            worker = _Worker(process, parent_end, parent_end.fileno())
            self._live.append(worker)
            self._watch(worker, asyncio.get_running_loop())
            if self._config is None:
                self._release(worker)
            else:
                self._warming += 1
                task = asyncio.get_running_loop().create_task(self._warm(worker, self._config))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _warm(self, worker: _Worker, config: DetectorConfig) -> None:
        try:
            status, payload = await self._run(
                worker, config, ["warm up"], STARTUP_LIMIT_S, STARTUP_LIMIT_S
            )
            if status != "ok":
                worker.configs.clear()
                log.error("classification_warm_up_failed", error=payload)
        except (TimeoutError, _WorkerLost) as error:
            # Dropped, not restarted here: a worker that cannot start would otherwise respawn
            # in a loop. The next request starts another and fails closed if it cannot.
            log.error("classification_warm_up_failed", error=type(error).__name__)
            self._discard(worker, restart=False)
        finally:
            self._warming -= 1

    def _discard(self, worker: _Worker, restart: bool = True) -> None:
        """A stuck or dead worker cannot be trusted with the next request: end it."""
        if worker not in self._live:
            return
        self._live.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self._unwatch(worker)
        if worker.reply is not None and not worker.reply.done():
            worker.reply.set_exception(_WorkerLost())
        if worker.expiry is not None:
            worker.expiry.cancel()
        worker.reply, worker.expiry = None, None
        worker.process.kill()  # reaped by multiprocessing when the next worker starts
        worker.conn.close()
        if restart:
            self._start_workers()

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (tests kill them to show the pool recovers)."""
        return [w.process.pid for w in self._live if w.process.pid]

    def shutdown(self) -> None:
        """Stop every worker: ask, then wait, then force. Called on the thread of the loop that
        watches the workers, or once no loop runs (`close` does the loop's part first)."""
        workers, self._live, self._idle = self._live, [], []
        for worker in workers:
            self._unwatch(worker)
            if worker.expiry is not None:
                worker.expiry.cancel()
            with contextlib.suppress(OSError, ValueError):  # a dead worker needs no asking
                worker.conn.send_bytes(pickle.dumps(None, _PROTOCOL))
        for worker in workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

    async def close(self) -> None:
        for worker in self._live:
            self._unwatch(worker)  # here, on the loop's thread; the waiting is done off it
            if worker.expiry is not None:
                worker.expiry.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.shutdown)
