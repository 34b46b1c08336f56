"""The classification pool and the filter's per-text cache, on a real worker process.

A request given up on (cancelled) hands its worker back once the worker answers, unless the
job overruns the time limit, which ends the worker; a full queue refuses at once; a worker
killed in the middle of a job fails that job closed and is replaced, and one killed while idle
is replaced before a request needs it; and a conversation resent
turn after turn only sends the worker texts it has not seen, the answers Sluice scanned on
their way back included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from proxy.classify.engine import DetectorConfig
from proxy.classify.findings import Finding
from proxy.classify.pool import ClassifierPool, ClassifierUnavailable
from proxy.context import Principal, RequestContext, WireFormat
from proxy.filters.classify import Classify, detector_config
from proxy.policy.loader import load_policy
from proxy.policy.store import PolicySnapshot

# Keeps a worker busy for a while (seconds), so a test can act while the job runs: a made-up
# name no word list knows, so spaCy reads a window around every one.
LONG_TEXT = " ".join(
    f"Call {i} with Ravi Okonkwo about the Qarvessa contract." for i in range(1000)
)


@pytest.fixture
def snapshot(policy_dir: Path) -> PolicySnapshot:
    return PolicySnapshot.from_loaded(load_policy(policy_dir))


@pytest.fixture
async def pool(classifier_pool: ClassifierPool, snapshot: PolicySnapshot) -> ClassifierPool:
    await classifier_pool.warm_up(detector_config(snapshot.policy.classification))
    return classifier_pool


async def _started(task: asyncio.Task[object]) -> None:
    """Lets the task send its job to the worker."""
    for _ in range(10):
        await asyncio.sleep(0.01)
    assert not task.done()


async def test_a_cancelled_request_hands_its_worker_back(
    pool: ClassifierPool, snapshot: PolicySnapshot
) -> None:
    config = detector_config(snapshot.policy.classification)
    pids = pool.worker_pids()
    task = asyncio.create_task(pool.detect(config, [LONG_TEXT], 60.0))
    await _started(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    found = await pool.detect(config, ["Write to jane.doe@example.com"], 60.0)
    assert [f.entity for f in found[0]] == ["EMAIL_ADDRESS"]
    assert pool.worker_pids() == pids  # the same worker, not a replacement


async def test_a_job_that_overruns_ends_its_worker_even_if_nobody_waits(
    pool: ClassifierPool, snapshot: PolicySnapshot
) -> None:
    config = detector_config(snapshot.policy.classification)
    (pid,) = pool.worker_pids()
    task = asyncio.create_task(pool.detect(config, [LONG_TEXT], 0.5))
    await _started(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.6)
    assert pid not in pool.worker_pids()  # not left busy with the orphaned job
    found = await pool.detect(config, ["Write to jane.doe@example.com"], 60.0)
    assert [f.entity for f in found[0]] == ["EMAIL_ADDRESS"]


async def test_a_full_queue_refuses_at_once(pool: ClassifierPool, snapshot: PolicySnapshot) -> None:
    config = detector_config(snapshot.policy.classification)
    limit, pool.queue_limit = pool.queue_limit, 1
    try:
        busy = asyncio.create_task(pool.detect(config, [LONG_TEXT], 60.0))
        await _started(busy)
        began = time.monotonic()
        with pytest.raises(ClassifierUnavailable, match="queue is full"):
            await pool.detect(config, ["one more"], 60.0)
        assert time.monotonic() - began < 1.0
        await busy
    finally:
        pool.queue_limit = limit


async def test_a_worker_killed_mid_job_fails_it_closed_and_is_replaced(
    pool: ClassifierPool, snapshot: PolicySnapshot
) -> None:
    config = detector_config(snapshot.policy.classification)
    task = asyncio.create_task(pool.detect(config, [LONG_TEXT], 60.0))
    await _started(task)
    (pid,) = pool.worker_pids()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ClassifierUnavailable, match="died"):
        await task
    found = await pool.detect(config, ["Call +1 212 555 0187 tomorrow"], 60.0)
    assert [f.entity for f in found[0]] == ["PHONE_NUMBER"]
    assert pool.worker_pids() != [pid]


async def test_a_worker_killed_while_idle_is_replaced_before_the_next_request(
    pool: ClassifierPool, snapshot: PolicySnapshot
) -> None:
    config = detector_config(snapshot.policy.classification)
    (pid,) = pool.worker_pids()
    os.kill(pid, signal.SIGKILL)
    for _ in range(500):  # the loop watches the idle worker's pipe and sees it close
        if pool.worker_pids() not in ([], [pid]):
            break
        await asyncio.sleep(0.01)
    assert pool.worker_pids() not in ([], [pid])
    found = await pool.detect(config, ["Write to jane.doe@example.com"], 60.0)
    assert [f.entity for f in found[0]] == ["EMAIL_ADDRESS"]


class RecordingDetection:
    """The real pool, noting which texts each call sends to the worker."""

    def __init__(self, pool: ClassifierPool) -> None:
        self.pool = pool
        self.sent: list[list[str]] = []

    async def detect(
        self, config: DetectorConfig, texts: Sequence[str], time_limit: float
    ) -> list[list[Finding]]:
        self.sent.append(list(texts))
        return await self.pool.detect(config, texts, time_limit)


async def test_a_resent_conversation_only_sends_new_texts_to_the_worker(
    pool: ClassifierPool, snapshot: PolicySnapshot
) -> None:
    recording = RecordingDetection(pool)
    classify = Classify(recording)
    principal = Principal(subject="a@corp.example", roles=("employee",), auth_method="token")
    history: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    for turn in range(1, 4):
        question = f"Question {turn}: ask jane.doe@example.com about invoice {turn}?"
        history.append({"role": "user", "content": question})
        ctx = RequestContext(
            request_id=f"turn-{turn}",
            received_at=time.time(),
            started=time.perf_counter(),
            wire=WireFormat.OPENAI_CHAT,
            policy=snapshot,
            headers={},
            client_address="127.0.0.1",
        )
        ctx.body = {"model": "gpt-4o", "messages": [dict(m) for m in history]}
        ctx.principal = principal
        recording.sent.clear()
        assert await classify.on_request(ctx) is None
        expected = [[history[0]["content"], question]] if turn == 1 else [[question]]
        assert recording.sent == expected
        # The answer, scanned on its way back, is what the client resends next turn.
        answer = f"Answer {turn}: I have written to Jane about invoice {turn}."
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
        assert ctx.output_scanner is not None
        recording.sent.clear()
        await ctx.output_scanner.scan_body(ctx, json.dumps(body).encode())
        assert recording.sent == [[answer]]
        history.append({"role": "assistant", "content": answer})
