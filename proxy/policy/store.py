"""Holds the live policy snapshot and swaps it on hot reload (file change or SIGHUP).

A reload that fails keeps the last good snapshot and remembers why, for the log and `/ready`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxy.policy.loader import LoadedPolicy, PolicyError, load_policy, policy_files
from proxy.policy.model import Policy, ProviderConfig

log = structlog.get_logger("sluice.policy")


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """One loaded version of the policy. Requests pin the snapshot they started with."""

    policy: Policy
    version: str
    files: tuple[str, ...]
    loaded_at: float
    # Per provider, a digest of its settings: upstream clients are reused across reloads
    # that leave a provider unchanged, and replaced when its URL, key or timeouts change.
    provider_digests: dict[str, str]

    @classmethod
    def from_loaded(cls, loaded: LoadedPolicy) -> PolicySnapshot:
        digests = {
            name: _provider_digest(config) for name, config in loaded.policy.providers.items()
        }
        return cls(loaded.policy, loaded.version, loaded.files, time.time(), digests)


def _provider_digest(config: ProviderConfig) -> str:
    settings = config.model_dump(mode="json")
    settings["api_key"] = config.api_key.get_secret_value() if config.api_key else None
    canonical = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()


class PolicyStore:
    """The current snapshot of one policy directory, reloaded in place."""

    def __init__(self, directory: Path, snapshot: PolicySnapshot) -> None:
        self.directory = directory
        self.current = snapshot
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._listeners: list[Callable[[PolicySnapshot], None]] = []
        self._fingerprint = _fingerprint(directory)

    @classmethod
    def open(cls, directory: Path) -> PolicyStore:
        """Load `directory` now; raises `PolicyError` if it is not a valid policy."""
        return cls(directory, PolicySnapshot.from_loaded(load_policy(directory)))

    def on_change(self, listener: Callable[[PolicySnapshot], None]) -> None:
        """Call `listener` with each new snapshot after a successful reload."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Load the directory again. On failure keep the current snapshot; return success."""
        self._fingerprint = _fingerprint(self.directory)
        try:
            loaded = load_policy(self.directory)
        except PolicyError as exc:
            self.last_error = "; ".join(str(p) for p in exc.problems)
            self.last_error_at = time.time()
            # Problems name files, lines and keys, never values, so they are safe to log.
            log.warning(
                "policy_reload_failed",
                kept_version=self.current.version,
                problems=[str(p) for p in exc.problems],
            )
            return False
        self.last_error = None
        self.last_error_at = None
        if loaded.version == self.current.version:
            return True
        previous = self.current.version
        self.current = PolicySnapshot.from_loaded(loaded)
        log.info("policy_reloaded", version=self.current.version, previous_version=previous)
        for listener in self._listeners:
            listener(self.current)
        return True

    async def watch(self, interval: float) -> None:
        """Poll the directory and reload when a policy file is added, removed or changed."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            fingerprint = await loop.run_in_executor(None, _fingerprint, self.directory)
            if fingerprint != self._fingerprint:
                self.reload()


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    entries = []
    for path in policy_files(directory):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(entries)
