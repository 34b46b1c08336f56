"""What the audit log costs: Sluice's throughput with the audit log (fsync, group commit) against
the same Sluice with `audit.enabled: false`, and how fast `sluice audit verify` reads a log.

Run `python benchmarks/audit.py`; it prints the figures and writes them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import overhead  # the sibling benchmark: processes, load generator, doc writing

REPO = overhead.REPO
SECTION = ("<!-- audit:start -->", "<!-- audit:end -->")
COMMAND = "python benchmarks/audit.py"
SCENARIOS = (
    overhead.Scenario(stream=False, concurrency=16),
    overhead.Scenario(stream=True, concurrency=16),
)
# Audited throughput over unaudited at concurrency 16, judged (like benchmarks/ratelimit.py)
# on what one core serves: CPU time per request, which other helpers' load on the shared
# machine disturbs far less than req/s. The req/s ratio is shown beside it.
TARGET_RATIO = 0.90
TARGET_VERIFY_MB_S = 50.0
AUDIT_ON = "audit:\n  enabled: true\n  content: redacted\n  fsync: true\n"
AUDIT_OFF = "audit:\n  enabled: false\n"
# The gateway's own dashboard off: it is then served (and the log indexed) by
# `sluice dashboard serve`, another process, not started here.
DASHBOARD_APART = "identity:\n  dashboard:\n    enabled: false\n"


@dataclass(frozen=True)
class Target:
    name: str  # "audit", "audit-apart" or "no-audit"
    bench: overhead.Bench
    data_dir: Path


@dataclass(frozen=True)
class Outcome:
    scenario: overhead.Scenario
    on: overhead.Summary  # audited, the dashboard in the gateway (the default)
    apart: overhead.Summary  # audited, the dashboard in a process of its own
    off: overhead.Summary  # not audited

    def rps_ratio(self, audited: overhead.Summary) -> float:
        return audited.rps / self.off.rps if self.off.rps else 0.0

    def cpu_ratio(self, audited: overhead.Summary) -> float:
        """Throughput one core could give, audited over unaudited, from CPU per request."""
        on, off = audited.cpu_us_per_request, self.off.cpu_us_per_request
        return off / on if on else 0.0


def start_target(
    stack: ExitStack,
    tmp: Path,
    settings: overhead.Settings,
    fake: subprocess.Popen[bytes],
    fake_url: str,
    name: str,
    audit_yaml: str,
) -> Target:
    """`sluice serve` on the benchmark's policies plus `audit_yaml`, pinned to Sluice's core."""
    home = tmp / name
    home.mkdir()
    policies = overhead.copy_policies(home)
    (policies / "audit.yaml").write_text(audit_yaml)
    env = {k: v for k, v in overhead.sluice_env(fake_url).items() if k != "REDIS_URL"}
    data_dir = home / "data"
    key = overhead.issue_token(policies, data_dir, env)
    port = overhead.free_port()
    argv = [
        *overhead.sluice_command(),
        *("serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--policies", str(policies), "--log-level", "warning", "--data-dir", str(data_dir)),
    ]
    log = stack.enter_context((home / "sluice.log").open("wb"))
    proc = stack.enter_context(
        overhead.spawn(argv, overhead.SLUICE_CPU, cwd=REPO, env=env, stderr=log)
    )
    url = f"http://127.0.0.1:{port}"
    overhead.wait_until(lambda: overhead.http_status(url + "/ready") == 200, proc, name)
    headers = overhead.request_headers(key)
    overhead.smoke_test(url, headers)
    bench = overhead.Bench(settings, home, fake, proc, {"sluice": url}, headers)
    return Target(name, bench, data_dir)


def measure(targets: Sequence[Target], scenario: overhead.Scenario) -> Outcome:
    """Warm each, then alternate them round by round (ABC CBA) so drift hits all alike."""
    settings = targets[0].bench.settings
    for target in targets:
        overhead.load(target.bench, "sluice", scenario, settings.warmup)
    runs: dict[str, list[overhead.Run]] = {t.name: [] for t in targets}
    per_round = settings.seconds / settings.rounds
    for index in range(settings.rounds):
        order = list(targets) if index % 2 == 0 else list(reversed(targets))
        for target in order:
            runs[target.name].append(overhead.measured(target.bench, "sluice", scenario, per_round))
    summary = {name: overhead.Summary.of(target_runs) for name, target_runs in runs.items()}
    return Outcome(scenario, summary["audit"], summary["audit-apart"], summary["no-audit"])


@dataclass(frozen=True)
class VerifyFigures:
    real_mb: float
    real_records: int
    real_ok: bool
    mb: float
    records: int
    wall_s: float
    cpu_s: float
    seal_us: float  # CPU to chain and serialize one request and one response record

    @property
    def mb_s_wall(self) -> float:
        return self.mb / self.wall_s if self.wall_s else 0.0

    @property
    def mb_s_cpu(self) -> float:
        return self.mb / self.cpu_s if self.cpu_s else 0.0


def verify_speed(audit_dir: Path, tmp: Path, target_mb: int) -> VerifyFigures:
    """Verify the log the load run wrote, then a larger one made of its records by the real
    writer (same shapes, same chain), timing `verify` by wall clock and by CPU."""
    sys.path.insert(0, str(REPO))
    from proxy.audit.chain import Chain
    from proxy.audit.search import read_records
    from proxy.audit.sink import SegmentLimits, SegmentWriter
    from proxy.audit.verify import verify

    real = verify(audit_dir, None)
    templates = [r for r in read_records(audit_dir) if r["kind"] in ("request", "response")][:2]
    for template in templates:
        for key in ("v", "seq", "prev", "hash"):
            template.pop(key, None)
    chain = Chain(None)
    rounds = 2000
    started = time.process_time()
    for _ in range(rounds):
        for template in templates:
            chain.seal({**template, "v": 1, "seq": 1, "prev": "0" * 64})
    seal_us = (time.process_time() - started) / rounds * 1e6
    big = tmp / "big-audit"
    writer = SegmentWriter(big, Chain(None), SegmentLimits(64 << 20, 1e9, None, False))
    writer.open()
    written = 0
    n = 0
    while written < target_mb * 1_000_000:
        batch = []
        for _ in range(500):
            n += 1
            for template in templates:
                batch.append({**template, "request_id": f"req_{n:024x}"})
        writer.write(batch)
        written += sum(len(json.dumps(r, separators=(",", ":"))) + 80 for r in batch)
    writer.close()
    subprocess.run(["sync"], check=False)
    wall, cpu = time.perf_counter(), time.process_time()
    report = verify(big, None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not report.ok:
        raise RuntimeError(f"the generated log does not verify: {report.problems[:3]}")
    return VerifyFigures(
        real.bytes / 1e6,
        real.records,
        real.ok,
        report.bytes / 1e6,
        report.records,
        wall,
        cpu,
        seal_us,
    )


def fs_type(path: Path) -> str:
    """The filesystem `path` lives on (fsync on a tmpfs would cost nothing)."""
    best, kind, device = "", "unknown", "?"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and resolved.startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind, device = fields[1], fields[2], fields[0]
    return f"{kind} ({device})"


CONFIGURATIONS = (
    ("no audit log", "off"),
    ("audit log, dashboard in the gateway (default)", "on"),
    ("audit log, dashboard in its own process", "apart"),
)


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [
        "| scenario | gateway | req/s | req/s ratio | CPU µs/req | CPU ratio | p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        for label, which in CONFIGURATIONS:
            summary: overhead.Summary = getattr(o, which)
            rows.append(
                f"| {o.scenario.name}, c{o.scenario.concurrency} | {label} | {summary.rps:.0f} "
                f"| {o.rps_ratio(summary):.2f} | {summary.cpu_us_per_request:.0f} "
                f"| {o.cpu_ratio(summary):.2f} | {summary.p50_ms:.1f} / {summary.p99_ms:.1f} |"
            )
    return "\n".join(rows)


def verdict(outcome: Outcome, audited: overhead.Summary) -> str:
    ratio = outcome.cpu_ratio(audited)
    met = "met" if ratio >= TARGET_RATIO else "**missed**"
    return f"{outcome.scenario.name} {ratio:.0%} ({met}; req/s {outcome.rps_ratio(audited):.0%})"


def section(
    outcomes: Sequence[Outcome],
    figures: VerifyFigures,
    settings: overhead.Settings,
    started: str,
    host: str,
    filesystem: str,
) -> str:
    default = ", ".join(verdict(o, o.on) for o in outcomes)
    apart = ", ".join(verdict(o, o.apart) for o in outcomes)
    index_us = [o.on.cpu_us_per_request - o.apart.cpu_us_per_request for o in outcomes]
    verify_verdict = "met" if figures.mb_s_wall >= TARGET_VERIFY_MB_S else "**missed**"
    noisy = [
        o
        for o in outcomes
        if max(o.on.cpu0_others, o.apart.cpu0_others, o.off.cpu0_others) > overhead.NOISY
    ]
    lines = [
        SECTION[0],
        "## Audit log",
        "",
        f"`{COMMAND}` — {started}, {overhead.revision()}; {host}. "
        f"Load by {overhead.generator_name(settings.generator)}; {settings.rounds} rounds of "
        f"{settings.seconds / settings.rounds:g} s per target, alternated (ABBA).",
        "",
        "Three `sluice serve` processes on the same policies (providers, models, one role, no "
        "limits, no classification), all pinned to CPU 0: two with the default audit log "
        "(`content: redacted`, `fsync: true`, group commit), one of them serving the security "
        "dashboard (the default: it indexes every record in the gateway's process) and one "
        "with `identity.dashboard.enabled: false` (the dashboard left to `sluice dashboard "
        "serve`, another process, not run here); and one with `audit.enabled: false` and no "
        "dashboard, the baseline. The fake upstream and the load generator share CPU 1. The "
        f"audit directory is on {filesystem}; every batch of records is one write and one "
        "`fdatasync`.",
        "",
        table(outcomes),
        "",
        f"- Target: audited throughput ≥ {TARGET_RATIO:.0%} of unaudited at concurrency 16, "
        "judged on Sluice's CPU time per request (the CPU ratio). With the dashboard in the "
        f"gateway: {default}. With the dashboard in its own process: {apart}. Indexing for "
        "the dashboard cost the gateway "
        + " and ".join(f"{us:.0f}" for us in index_us)
        + " µs of CPU per request (two records) in the two scenarios. req/s can be "
        "lower than the CPU ratio when the audited process is not saturated: at "
        "concurrency 16 each request also waits about a millisecond for its batch's "
        "`fdatasync`, and the core idles meanwhile.",
        f"- `verify`: {figures.mb:.0f} MB ({figures.records} records, shaped like the run's "
        f"own) in {figures.wall_s:.2f} s wall, {figures.cpu_s:.2f} s CPU: "
        f"**{figures.mb_s_wall:.0f} MB/s** wall, {figures.mb_s_cpu:.0f} MB/s per CPU second; "
        f"target ≥ {TARGET_VERIFY_MB_S:.0f} MB/s, {verify_verdict}.",
        f"- Chaining and serializing one request and one response record (orjson canonical "
        f"JSON, SHA-256), measured alone in this process: {figures.seal_us:.0f} µs of CPU. "
        "See docs/audit.md (Performance) for where the rest of the difference goes.",
        f"- The log the load run wrote ({figures.real_mb:.1f} MB, {figures.real_records} "
        f"records) verified {'clean' if figures.real_ok else '**with problems**'}.",
    ]
    if noisy:
        names = ", ".join(f"{o.scenario.name} c{o.scenario.concurrency}" for o in noisy)
        lines.append(
            f"- Other processes used more than {overhead.NOISY:.0%} of CPU 0 during: {names}."
        )
    lines.append(SECTION[1])
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=12.0, help="per target per scenario")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per target (default 4)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--verify-mb", type=int, default=200, help="size of the verified log")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    overhead.use_venv(__file__)
    args = parse_args(argv)
    overhead.exit_on_sigterm()
    generator = "wrk" if Path(overhead.WRK).exists() else "aiohttp"
    settings = overhead.Settings(args.seconds, max(1, args.rounds), args.warmup, generator)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = overhead.machine()
    with tempfile.TemporaryDirectory(prefix="sluice-audit-bench-") as name:
        tmp = Path(name)
        filesystem = fs_type(tmp)
        with ExitStack() as stack:
            fake, fake_url = overhead.start_fake(stack, tmp)
            targets = [
                start_target(stack, tmp, settings, fake, fake_url, "audit", AUDIT_ON),
                start_target(
                    stack, tmp, settings, fake, fake_url, "audit-apart", AUDIT_ON + DASHBOARD_APART
                ),
                start_target(
                    stack, tmp, settings, fake, fake_url, "no-audit", AUDIT_OFF + DASHBOARD_APART
                ),
            ]
            outcomes: list[Outcome] = []
            for scenario in SCENARIOS:
                print(f"  {scenario.name}, concurrency {scenario.concurrency} ...", file=sys.stderr)
                outcomes.append(measure(targets, scenario))
        print("  verify ...", file=sys.stderr)
        figures = verify_speed(targets[0].data_dir / "audit", tmp, args.verify_mb)
        shutil.rmtree(tmp / "big-audit", ignore_errors=True)
    print(table(outcomes))
    print(
        f"verify: {figures.mb:.0f} MB in {figures.wall_s:.2f} s wall "
        f"({figures.mb_s_wall:.0f} MB/s), {figures.cpu_s:.2f} s CPU ({figures.mb_s_cpu:.0f} MB/s)"
    )
    if not args.no_write:
        text = section(outcomes, figures, settings, started, host, filesystem)
        overhead.write_section(text, markers=SECTION)
        print(f"wrote {overhead.DOC.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
