"""Process settings that are not policy: where state lives and which Redis to share.

They come from the command line and the environment, and never change while Sluice runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.audit.chain import key_from_env


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("var")  # local token store and, by default, the audit log
    redis_url: str | None = None  # shared state between replicas; None: this replica alone
    classify_workers: int = 1  # processes for classification (from_env: cores - 1)
    # OpenTelemetry: export over OTLP/HTTP when the standard OTEL_EXPORTER_OTLP_* variables
    # name a collector; the exporters read endpoint, headers and timeouts from them.
    otlp_traces: bool = False
    otlp_metrics: bool = False
    service_name: str = "sluice"
    # Send `traceparent` to cloud (external) providers too; internal ones always get it.
    trace_external_upstreams: bool = False
    # Keys the audit chain's hashes (HMAC-SHA256) when set; never printed.
    audit_hmac_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return cls(
            data_dir=Path(env.get("SLUICE_DATA_DIR") or "var"),
            redis_url=env.get("REDIS_URL") or None,
            classify_workers=int(
                env.get("SLUICE_CLASSIFY_WORKERS") or max(1, (os.cpu_count() or 2) - 1)
            ),
            otlp_traces=bool(otlp or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
            otlp_metrics=bool(otlp or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")),
            service_name=env.get("OTEL_SERVICE_NAME") or "sluice",
            trace_external_upstreams=_flag(env.get("SLUICE_TRACE_EXTERNAL_UPSTREAMS")),
            audit_hmac_key=key_from_env(env),
        )

    def audit_dir(self, configured: str | None) -> Path:
        """The audit log directory: the policy's `audit.dir`, else `<data dir>/audit`."""
        return Path(configured) if configured else self.data_dir / "audit"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
