"""Keeps the index up to date while Sluice runs, and runs the pages' queries off the loop.

A background task polls the audit directory every second; the SQLite work runs in a thread
of its own (one writer), the pages' queries in two reader threads (WAL: readers never wait
for the writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from proxy.dashboard.index import BATCH_RECORDS, AuditIndex, IndexCorrupt

log = structlog.get_logger("sluice.dashboard")
T = TypeVar("T")


class IndexService:
    def __init__(self, index: AuditIndex, poll_interval: float = 1.0) -> None:
        self.index = index
        self.poll_interval = poll_interval
        self.caught_up = asyncio.Event()  # set once the index has read everything there was
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-index")
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dashboard-query")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self.index.open)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                read = await loop.run_in_executor(self._writer, self.index.catch_up)
            except IndexCorrupt as exc:
                log.info("dashboard_index_rebuild", reason=str(exc))
                await loop.run_in_executor(self._writer, self.index.rebuild)
                read = 0
            except (sqlite3.DatabaseError, OSError, ValueError) as exc:
                # A corrupt index is rebuilt from the segments; the next poll starts over.
                log.error("dashboard_index_failed", error_type=type(exc).__name__)
                await loop.run_in_executor(self._writer, self.index.rebuild)
                read = 0
            if read >= BATCH_RECORDS:
                continue  # more waiting: no pause while catching up
            if read:
                log.info("dashboard_indexed", records=read)
            self.caught_up.set()
            await asyncio.sleep(self.poll_interval)

    async def query(self, work: Callable[[sqlite3.Connection], T]) -> T:
        index = self.index

        def run() -> T:
            return work(index.reader())

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self.index.close)
        self._writer.shutdown(wait=False)
        self._readers.shutdown(wait=False)
