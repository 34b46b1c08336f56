"""The audit log end to end: one request and one response record per request however it ends,
a chain that `verify` accepts, and every kind of tampering named by segment, line and seq.

No audit, no egress: when the log cannot be written, requests fail closed with 503 and the
upstream receives nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from proxy.audit.chain import GENESIS, Chain
from proxy.audit.search import read_records
from proxy.audit.verify import Report, verify
from proxy.cli import main
from proxy.handler import GATEWAY
from proxy.testing import FakeAnthropic, FakeOpenAI, FakeVLLM
from tests.conftest import Sluice

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
MASKING = {"public": "allow", "internal": "allow", "confidential": "mask", "restricted": "block"}


@pytest.fixture
def policy_dir(policy_dir: Path) -> Path:
    """The default policies with small segments, so a short run spans several files."""
    _edit_audit(policy_dir, segment_max_bytes=4096)
    return policy_dir


def _edit_audit(policy_dir: Path, **changes: Any) -> None:
    path = policy_dir / "audit.yaml"
    document = yaml.safe_load(path.read_text())
    document["audit"].update(changes)
    path.write_text(yaml.safe_dump(document))


def _edit_classification(sluice: Sluice, **changes: Any) -> None:
    path = sluice.policy_dir / "classification.yaml"
    document = yaml.safe_load(path.read_text())
    document["classification"].update(changes)
    path.write_text(yaml.safe_dump(document))
    assert sluice.store.reload(), sluice.store.last_error


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def audit_dir(sluice: Sluice) -> Path:
    return sluice.settings.data_dir / "audit"


async def settled_records(sluice: Sluice, responses: int) -> list[dict[str, Any]]:
    """The log's records once `responses` response records are on disk."""
    async with asyncio.timeout(10):
        while True:
            records = list(read_records(audit_dir(sluice)))
            done = sum(1 for r in records if r["kind"] == "response")
            if done >= responses and sluice.app[GATEWAY].audit.idle:
                return records
            await asyncio.sleep(0.02)


def by_request(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    grouped: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        if record["kind"] in ("request", "response"):
            kinds = grouped.setdefault(record["request_id"], {})
            assert record["kind"] not in kinds, f"two {record['kind']} records for one request"
            kinds[record["kind"]] = record
    return grouped


async def run_every_path(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
) -> int:
    """Allowed, streamed, denied, blocked, rerouted, masked, failed upstream and a client that
    leaves mid-stream: returns how many requests were made."""
    await openai_client.chat.completions.create(model="gpt-4o", messages=_user("Hi there"))
    stream = await anthropic_client.messages.create(
        model="claude-sonnet-4-6", max_tokens=32, messages=_user("Stream please"), stream=True
    )
    async for _event in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(model="no-such-model", messages=_user("x"))
    with pytest.raises(openai.BadRequestError):
        await openai_client.chat.completions.create(
            model="gpt-4o", messages=_user(f"My card is {CARD}")
        )
    await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user(f"Draft a reply to {EMAIL}.")
    )
    _edit_classification(sluice, actions=MASKING)
    fake_openai.behaviour.reply_text = "I will write to <EMAIL_ADDRESS_1> today."
    answer = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user(f"Please email {EMAIL}.")
    )
    assert answer.choices[0].message.content == f"I will write to {EMAIL} today."
    fake_openai.behaviour.reply_text = "Hello from the fake upstream."
    fake_openai.behaviour.fail_status = 500
    with pytest.raises(openai.InternalServerError):
        await openai_client.chat.completions.create(model="gpt-4o", messages=_user("fail"))
    fake_openai.behaviour.fail_status = None
    fake_openai.behaviour.event_delay_s = 0.2
    chunks = await openai_client.chat.completions.create(
        model="gpt-4o", messages=_user("Stream slowly"), stream=True
    )
    await chunks.__anext__()
    await chunks.close()
    await asyncio.wait_for(fake_openai.disconnected.wait(), 2.0)
    return 8


async def test_every_request_leaves_one_request_and_one_response_record(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_vllm: FakeVLLM,
) -> None:
    count = await run_every_path(sluice, openai_client, anthropic_client, fake_openai)
    records = await settled_records(sluice, count)
    grouped = by_request(records)
    assert len(grouped) == count
    assert all(set(kinds) == {"request", "response"} for kinds in grouped.values())
    responses = [kinds["response"] for kinds in grouped.values()]
    outcomes = Counter((r["decision"], r["ended"], r["status"]) for r in responses)
    assert outcomes == Counter(
        {
            ("allowed", "completed", 200): 2,
            ("denied", "denied", 404): 1,
            ("blocked", "denied", 400): 1,
            ("rerouted", "completed", 200): 1,
            ("masked", "completed", 200): 1,
            ("failed", "upstream_error", 500): 1,
            ("allowed", "client_disconnect", 499): 1,
        }
    )
    # Every request record precedes its response record in the chain.
    for kinds in grouped.values():
        assert kinds["request"]["seq"] < kinds["response"]["seq"]
    report = verify(audit_dir(sluice), None)
    assert report.ok, [str(p) for p in report.problems]
    assert report.segments > 1  # small segments: the chain crosses files

    streamed = next(r for r in responses if r["endpoint"] == "anthropic.messages")
    assert streamed["content"]["response"] == fake_anthropic.behaviour.reply_text
    assert streamed["usage"]["completion_tokens"] > 0 and streamed["cost_usd"] > 0
    rerouted = next(r for r in responses if r["decision"] == "rerouted")
    assert rerouted["route"]["kind"] == "sensitive" and rerouted["level"] == "confidential"
    assert rerouted["entities"] == {"EMAIL_ADDRESS": 1}
    assert rerouted["findings"][0]["where"] == "messages.0.content"
    assert rerouted["model_answered"] == "meta-llama/Llama-3.3-70B-Instruct"
    latency = rerouted["latency_ms"]
    assert latency["total"] >= latency["upstream"] >= latency["upstream_ttfb"] > 0
    assert latency["overhead"] == pytest.approx(latency["total"] - latency["upstream"], abs=0.01)
    assert [step["filter"] for step in rerouted["trail"]][-1] == "route"
    masked = next(r for r in responses if r["decision"] == "masked")
    assert masked["content"]["response"] == "I will write to <EMAIL_ADDRESS_1> today."
    assert masked["output_entities"] == {"EMAIL_ADDRESS": 1}  # the answer was scanned too
    masked_request = grouped[masked["request_id"]]["request"]
    assert masked_request["content"]["messages"] == [
        {"role": "user", "text": "Please email <EMAIL_ADDRESS_1>."}
    ]
    assert masked_request["principal"]["subject"] == "alice@corp.example"
    # Redacted is the default: no detected value is anywhere in the log.
    for path in audit_dir(sluice).iterdir():
        text = path.read_text()
        assert EMAIL not in text and CARD not in text

    assert main(["audit", "verify", str(audit_dir(sluice))]) == 0


async def test_content_modes_full_hash_and_none(
    sluice: Sluice, openai_client: openai.AsyncOpenAI
) -> None:
    _edit_classification(sluice, actions=MASKING)
    prompt = f"Please email {EMAIL}."
    for mode in ("full", "hash", "none"):
        _edit_audit(sluice.policy_dir, content=mode)
        assert sluice.store.reload(), sluice.store.last_error
        await openai_client.chat.completions.create(model="gpt-4o", messages=_user(prompt))
    records = await settled_records(sluice, 3)
    requests = [r for r in records if r["kind"] == "request"]
    responses = [r for r in records if r["kind"] == "response"]
    assert [r["content_mode"] for r in requests] == ["full", "hash", "none"]
    reply = "Hello from the fake upstream."
    assert requests[0]["content"] == {"messages": [{"role": "user", "text": prompt}]}
    assert responses[0]["content"] == {"response": reply}
    import hashlib

    digest = hashlib.sha256(prompt.encode()).hexdigest()
    assert requests[1]["content"] == {"messages": [{"role": "user", "sha256": digest}]}
    assert responses[1]["content"] == {
        "response_sha256": hashlib.sha256(reply.encode()).hexdigest()
    }
    assert requests[2]["content"] is None and responses[2]["content"] is None


# --- Tampering ---------------------------------------------------------------------------


@pytest.fixture
async def recorded_log(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
) -> Path:
    """A log written by a real run over several segments, verified clean."""
    count = await run_every_path(sluice, openai_client, anthropic_client, fake_openai)
    await settled_records(sluice, count)
    directory = audit_dir(sluice)
    assert verify(directory, None).ok
    return directory


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("audit-*.jsonl"))


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _seq(line: bytes) -> int:
    seq: int = json.loads(line)["seq"]
    return seq


def _edit(copy: Path) -> tuple[str, int, int | None]:
    segment = _segments(copy)[1]
    lines = _lines(segment)
    record = json.loads(lines[2])
    record["requested_model"] = "something-else"
    lines[2] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    segment.write_bytes(b"".join(lines))
    return segment.name, 3, record["seq"]


def _delete(copy: Path) -> tuple[str, int, int | None]:
    segment = _segments(copy)[0]
    lines = _lines(segment)
    del lines[2]
    segment.write_bytes(b"".join(lines))
    return segment.name, 3, _seq(lines[2])


def _reorder(copy: Path) -> tuple[str, int, int | None]:
    segment = _segments(copy)[0]
    lines = _lines(segment)
    lines[1], lines[2] = lines[2], lines[1]
    segment.write_bytes(b"".join(lines))
    return segment.name, 2, _seq(lines[1])


def _insert(copy: Path) -> tuple[str, int, int | None]:
    # A forger who knows the format seals a record that chains onto line 2; the record after
    # it no longer fits.
    segment = _segments(copy)[0]
    lines = _lines(segment)
    before = json.loads(lines[1])
    forged = {"kind": "request", "ts": before["ts"], "request_id": "req_forged", "v": 1}
    forged.update(seq=before["seq"] + 1, prev=before["hash"])
    line, _ = Chain(None).seal(forged)
    lines.insert(2, line)
    segment.write_bytes(b"".join(lines))
    return segment.name, 4, _seq(lines[3])


def _truncate(copy: Path) -> tuple[str, int, int | None]:
    segment = _segments(copy)[-1]
    lines = _lines(segment)
    segment.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
    return segment.name, len(lines), None


def _truncate_whole_lines(copy: Path) -> tuple[str, int, int | None]:
    # Cut at a line boundary: only the next segment's start shows it.
    first, second = _segments(copy)[:2]
    lines = _lines(first)
    first.write_bytes(b"".join(lines[:-1]))
    return second.name, 1, _seq(_lines(second)[0])


def _remove_segment(copy: Path) -> tuple[str, int | None, int | None]:
    segment = _segments(copy)[1]
    segment.unlink()
    return segment.name, None, None


def _remove_first_segment(copy: Path) -> tuple[str, int | None, int | None]:
    first, second = _segments(copy)[:2]
    first.unlink()
    return second.name, 1, _seq(_lines(second)[0])


@pytest.mark.parametrize(
    "tamper",
    [
        _edit,
        _delete,
        _reorder,
        _insert,
        _truncate,
        _truncate_whole_lines,
        _remove_segment,
        _remove_first_segment,
    ],
)
async def test_tampering_is_detected_and_located(
    recorded_log: Path, tmp_path: Path, tamper: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(recorded_log, copy)
    segment, line, seq = tamper(copy)
    report = verify(copy, None)
    assert not report.ok
    assert _names(report, segment, line, seq), [str(p) for p in report.problems]
    capsys.readouterr()
    assert main(["audit", "verify", str(copy)]) == 1
    printed = capsys.readouterr().out
    assert segment in printed


def _names(report: Report, segment: str, line: int | None, seq: int | None) -> bool:
    return any(
        p.segment == segment and p.line == line and (seq is None or p.seq == seq)
        for p in report.problems
    )


# --- No audit, no egress ---------------------------------------------------------------------


async def test_unwritable_audit_directory_fails_closed(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> None:
    await openai_client.chat.completions.create(model="gpt-4o", messages=_user("before"))
    assert len(fake_openai.received) == 1
    directory = audit_dir(sluice)
    # A file where the directory was: fails for root too, unlike chmod.
    directory.rename(directory.with_name("audit-moved"))
    directory.write_text("not a directory")

    with pytest.raises(openai.InternalServerError) as caught:
        await openai_client.chat.completions.create(model="gpt-4o", messages=_user("during"))
    assert caught.value.status_code == 503
    assert "audit log" in str(caught.value.body)
    with pytest.raises(anthropic.InternalServerError) as anthropic_caught:
        await anthropic_client.messages.create(
            model="claude-sonnet-4-6", max_tokens=16, messages=_user("during"), stream=True
        )
    assert anthropic_caught.value.status_code == 503
    assert len(fake_openai.received) == 1
    assert fake_anthropic.received == []

    # Once the directory is back, requests flow again, chained on from the last record.
    directory.unlink()
    directory.mkdir()
    await openai_client.chat.completions.create(model="gpt-4o", messages=_user("after"))
    assert len(fake_openai.received) == 2
    start = next(r for r in read_records(directory) if r["kind"] == "segment_start")
    assert start["prev"] != GENESIS


async def test_startup_refuses_an_unwritable_audit_directory(
    policy_dir: Path, tmp_path: Path
) -> None:
    from proxy.app import build_app, start_server
    from proxy.policy.store import PolicyStore
    from proxy.settings import Settings
    from tests.conftest import shared_classifier

    settings = Settings(data_dir=tmp_path / "var")
    settings.data_dir.mkdir()
    (settings.data_dir / "audit").write_text("a file")
    app = build_app(
        PolicyStore.open(policy_dir), settings, watch_interval=0, classifier=shared_classifier()
    )
    with pytest.raises(OSError):
        await start_server(app, "127.0.0.1", 0)


async def test_replay_reads_a_real_run_and_finds_what_a_policy_changes(
    sluice: Sluice,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    fake_openai: FakeOpenAI,
    fake_vllm: FakeVLLM,
    classifier_pool: Any,
    tmp_path: Path,
) -> None:
    """`sluice policy replay` over the log this gateway really wrote. The run switched
    confidential data from reroute to mask halfway, so replaying under its final policy
    changes exactly the one request rerouted before the switch; a policy that blocks
    confidential data turns both the rerouted and the masked request into blocks."""
    from proxy.policy.evaluate import Judge
    from proxy.policy.loader import load_policy
    from proxy.policy.replay import read_audit, replay

    count = await run_every_path(sluice, openai_client, anthropic_client, fake_openai)
    await settled_records(sluice, count)

    async def changes(policies: Path) -> dict[tuple[str, str], int]:
        judge = Judge(load_policy(policies), classifier_pool)
        report = await replay(judge, read_audit(audit_dir(sluice)))
        assert report.read == count
        return {(g.before, g.after): g.count for g in report.ordered()}

    assert await changes(sluice.policy_dir) == {("rerouted", "masked"): 1}

    blocking = tmp_path / "blocking"
    shutil.copytree(sluice.policy_dir, blocking)
    path = blocking / "classification.yaml"
    document = yaml.safe_load(path.read_text())
    document["classification"]["actions"]["confidential"] = "block"
    path.write_text(yaml.safe_dump(document))
    assert await changes(blocking) == {("rerouted", "blocked"): 1, ("masked", "blocked"): 1}


async def test_the_log_sluice_writes_is_indexed_with_an_intact_chain(
    sluice: Sluice, openai_client: openai.AsyncOpenAI
) -> None:
    """The dashboard reads the audit log the gateway itself wrote (not a fixture of its own
    making) and finds its hash chain intact, as `sluice audit verify` does."""
    from proxy.dashboard.views import DASHBOARD
    from tests.test_dashboard import wait_indexed

    ids = []
    for text in ("What is two plus two?", "Write to jane.doe@example.com about Ünïcode"):
        raw = await openai_client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": text}]
        )
        ids.append(raw.headers["x-request-id"])
    for request_id in ids:
        await wait_indexed(sluice, request_id)
    service = sluice.app[DASHBOARD].index
    state = await service.query(lambda db: service.index.chain())
    assert state.ok, state.problem
    assert state.records >= 4
