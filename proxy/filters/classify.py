"""Filter `classify`: finds PII, secrets and the organisation's markers in everything the
upstream would see, and allows, masks, reroutes or blocks as the policy's `classification` says.

Detection runs in worker processes (`proxy/classify/pool.py`); a timeout or a dead worker
fails the request closed (503). Findings are kept as entity types and positions, never values.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, cast

from proxy.classify.decision import decide
from proxy.classify.engine import DetectorConfig, RecognizerSpec
from proxy.classify.extract import Path, extract_texts, rewrite_texts
from proxy.classify.findings import Finding
from proxy.classify.masking import Masker
from proxy.classify.output import OutputScanner
from proxy.classify.pool import ClassifierUnavailable
from proxy.classify.secrets import SECRET_ENTITIES
from proxy.context import Deny, RequestContext
from proxy.errors import ErrorKind
from proxy.policy.model import Classification

_CACHE_LIMIT = 50_000


def detector_config(policy: Classification) -> DetectorConfig:
    org_entities = {r.entity for r in policy.recognizers}
    presidio = tuple(
        sorted(e for e in policy.levels if e not in SECRET_ENTITIES and e not in org_entities)
    )
    recognizers = tuple(
        RecognizerSpec(r.entity, r.pattern, r.terms, r.context, r.case_sensitive)
        for r in policy.recognizers
    )
    return DetectorConfig(presidio, recognizers, policy.min_score)


class Detection(Protocol):
    """What runs the detectors: the worker pool when serving; `sluice policy replay` wraps it
    to add the entity types an audit record carries when its text was not recorded."""

    async def detect(
        self, config: DetectorConfig, texts: Sequence[str], time_limit: float
    ) -> list[list[Finding]]: ...


class Classify:
    name = "classify"

    def __init__(self, pool: Detection) -> None:
        self._pool = pool
        self._configs: dict[str, DetectorConfig] = {}
        # Findings per text: a conversation resent every turn only classifies its new message.
        self._cache: OrderedDict[tuple[str, bytes], tuple[Finding, ...]] = OrderedDict()

    async def on_request(self, ctx: RequestContext) -> Deny | None:
        policy = ctx.policy.policy.classification
        if not policy.enabled:
            return None
        extracted = extract_texts(ctx.body)
        if extracted.non_text_parts and policy.non_text == "block":
            return Deny(
                ErrorKind.INVALID_REQUEST,
                "This request carries images, files or audio, which policy does not let "
                "through this gateway.",
                code="non_text_blocked",
            )
        config = self._config(ctx.policy.version, policy)
        try:
            per_slot = await self._detect(config, [s.text for s in extracted.slots], policy)
        except ClassifierUnavailable:
            return Deny(
                ErrorKind.UNAVAILABLE,
                "The request could not be checked for sensitive data right now; it was not "
                "forwarded. Try again shortly.",
            )
        findings: list[tuple[Path, Finding]] = [
            (slot.path, finding)
            for slot, found in zip(extracted.slots, per_slot, strict=True)
            for finding in found
        ]
        assert ctx.principal is not None, "authn runs first"
        verdict = decide(findings, ctx.principal.roles, policy)
        ctx.classification = verdict
        if policy.output.scan:
            ctx.output_scanner = OutputScanner(
                lambda texts: self._detect(config, texts, policy), policy
            )
        if verdict.action == "block":
            return Deny(
                ErrorKind.INVALID_REQUEST,
                "This request contains data that may not leave the company "
                f"({', '.join(verdict.entity_types)}); it was blocked.",
                code="sensitive_data_blocked",
            )
        if verdict.action == "mask" and verdict.findings:
            masker = Masker()
            by_path: dict[Path, list[Finding]] = {}
            for path, finding in verdict.findings:
                by_path.setdefault(path, []).append(finding)
            ctx.body = rewrite_texts(
                ctx.body,
                extracted.slots,
                lambda slot: masker.mask(slot.text, by_path.get(slot.path, [])),
            )
            ctx.masker = masker
        return None

    def _config(self, version: str, policy: Classification) -> DetectorConfig:
        config = self._configs.get(version)
        if config is None:
            if len(self._configs) > 16:
                self._configs.clear()
            config = self._configs[version] = detector_config(policy)
        return config

    async def _detect(
        self, config: DetectorConfig, texts: list[str], policy: Classification
    ) -> list[tuple[Finding, ...]]:
        # Runs on every request and answer, most texts already known: one hash per text (sha256
        # is the fastest of hashlib's here), one lookup, and only unknown texts go to the pool.
        digest, cache, sha256 = config.digest, self._cache, hashlib.sha256
        keys = [(digest, sha256(t.encode()).digest()) for t in texts]
        result: list[tuple[Finding, ...] | None] = []
        unknown: dict[tuple[str, bytes], str] = {}  # each distinct text is classified once
        for key, text in zip(keys, texts, strict=True):
            cached = cache.get(key)
            if cached is None:
                unknown.setdefault(key, text)
            else:
                cache.move_to_end(key)
            result.append(cached)
        if not unknown:
            return cast(list[tuple[Finding, ...]], result)
        found = await self._pool.detect(config, list(unknown.values()), policy.timeout_seconds)
        fresh = {key: tuple(findings) for key, findings in zip(unknown, found, strict=True)}
        cache.update(fresh)
        while len(cache) > _CACHE_LIMIT:
            cache.popitem(last=False)
        return [fresh[key] if r is None else r for key, r in zip(keys, result, strict=True)]
