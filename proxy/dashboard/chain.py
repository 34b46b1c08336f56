"""Checks the audit log's hash chain as the index reads it, record by record.

Each record carries the hash of the one before it and its own hash over its canonical JSON
(SHA-256, or HMAC-SHA256 keyed by `SLUICE_AUDIT_HMAC_KEY`). The index reads every record
anyway, so it checks the chain on the way and the overview shows the latest result.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

from proxy.audit.chain import GENESIS, HMAC_KEY_ENV, Chain, canonical, split_sealed


@dataclass(frozen=True, slots=True)
class ChainState:
    """The chain as far as the index has read it; `problem` is the first break found."""

    records: int = 0
    last_seq: int | None = None
    last_hash: str | None = None
    problem: str | None = None
    keyed: bool = False
    checked_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChainState:
        data = json.loads(text)
        return cls(**data)


def record_hash(record: dict[str, Any], key: bytes | None) -> str:
    """The hash the audit writer sealed `record` with: the same canonical form and digest
    (`proxy.audit.chain`), so the two can never disagree on what a record's hash is."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return Chain(key).digest(canonical(body))


class ChainChecker:
    """Carries a `ChainState` forward over records in log order."""

    def __init__(self, state: ChainState, key: bytes | None = None) -> None:
        self.key = key if key is not None else _env_key()
        self.state = replace(state, keyed=self.key is not None)

    def broken(self, where: str, why: str) -> None:
        if self.state.problem is None:
            self.state = replace(self.state, problem=f"{where}: {why}")

    def check(
        self, record: dict[str, Any], where: str, now: float, line: bytes | None = None
    ) -> None:
        """Carry the chain over `record`; `line` is the record as written (with its newline),
        whose hash covers the bytes on disk rather than a re-serialisation of them."""
        state = self.state
        seq, prev, own = record.get("seq"), record.get("prev"), record.get("hash")
        if not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(own, str):
            self.broken(where, "a record without seq, prev or hash")
        else:
            if state.last_seq is None:
                # The first record read: the very first of the log, or the first that
                # retention kept (whose predecessor is gone with its segment).
                if seq == 0 and prev != GENESIS:
                    self.broken(where, f"record {seq} does not start the chain")
            elif seq != state.last_seq + 1:
                self.broken(where, f"record {seq} follows record {state.last_seq}")
            elif prev != state.last_hash:
                self.broken(where, f"record {seq} does not chain to record {state.last_seq}")
            if not self._hash_matches(record, own, line):
                self.broken(where, f"record {seq} does not match its hash")
        self.state = replace(
            self.state,
            records=state.records + 1,
            last_seq=seq if isinstance(seq, int) else state.last_seq,
            last_hash=own if isinstance(own, str) else state.last_hash,
            checked_at=now,
        )

    def _hash_matches(self, record: dict[str, Any], own: str, line: bytes | None) -> bool:
        sealed = split_sealed(line) if line is not None else None
        if sealed is None:
            return hmac.compare_digest(record_hash(record, self.key), own)
        body, stated = sealed
        return stated == own and hmac.compare_digest(Chain(self.key).digest(body), own)


def _env_key() -> bytes | None:
    value = os.environ.get(HMAC_KEY_ENV)
    return value.encode() if value else None
