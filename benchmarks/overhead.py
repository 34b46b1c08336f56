"""Measures what Sluice adds in front of a fake OpenAI upstream: req/s and p50/p99 latency.

Run `python benchmarks/overhead.py`; it prints a table and writes it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
DOC = REPO / "docs" / "benchmarks.md"
SECTION_START, SECTION_END = "<!-- overhead:start -->", "<!-- overhead:end -->"
COMMAND = "python benchmarks/overhead.py"

SLUICE_CPU = "0"  # Sluice alone on this core
LOAD_CPU = "1"  # the fake upstream and the load generator share this one
WRK = "/usr/bin/wrk"
PATH = "/v1/chat/completions"
UPSTREAM_KEY = "sk-bench-upstream"
PLACEHOLDER_KEY = "sk-bench-client"  # for a Sluice without authentication, and for the fake
# Routing only: the repository's roles carry rate limits (and a global gpt-4o ceiling) that a
# load test would hit at once; limits get their own benchmark.
POLICY_FILES = ("providers.yaml", "models.yaml")
ROLE = "sluice-bench"
ACCESS_POLICY = f"""\
# Written by benchmarks/overhead.py: a role for the benchmark's personal token, no limits.
roles:
  {ROLE}: {{models: ["gpt-4o"], endpoints: [chat]}}
"""
AUDIT_OFF = "audit:\n  enabled: false\n"
HEADERS_ENV = "SLUICE_BENCH_HEADERS"  # how the aiohttp load generator gets the headers

TARGET_ADDED_P50_MS = 1.0  # non-streaming, concurrency 1
TARGET_RPS = 1500.0  # non-streaming, concurrency 16, one core
SATURATED = 0.85  # share of a core above which that core is what limits a run
NOISY = 0.10  # share of Sluice's core used by anything else that is worth a warning
LITELLM_NOTE = (
    "For reference, LiteLLM's proxy on this kind of machine (one worker, one core) adds about "
    "9.7 ms p50 at concurrency 1 and serves about 150 req/s at concurrency 16."
)


@dataclass(frozen=True)
class Scenario:
    stream: bool
    concurrency: int

    @property
    def name(self) -> str:
        return "streaming" if self.stream else "non-streaming"

    def body(self) -> bytes:
        request: dict[str, Any] = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Say hello in five words."}],
        }
        if self.stream:
            request["stream"] = True
        return json.dumps(request, separators=(",", ":")).encode()


SCENARIOS = (
    Scenario(stream=False, concurrency=1),
    Scenario(stream=False, concurrency=16),
    Scenario(stream=True, concurrency=1),
    Scenario(stream=True, concurrency=16),
)


@dataclass(frozen=True)
class Run:
    """One load-generator run against one target."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    sluice_cpu_s: float = 0.0  # CPU 0
    fake_cpu_s: float = 0.0  # CPU 1, with the load generator's
    load_cpu_s: float = 0.0
    cpu0_busy_s: float = 0.0  # by any process, from /proc/stat

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Summary:
    """The median of a target's rounds in one scenario."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float  # Sluice's
    sluice_core: float  # share of CPU 0 Sluice used
    load_core: float  # share of CPU 1 the fake and the load generator used
    cpu0_others: float  # share of CPU 0 that processes other than Sluice used (noise)

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Summary:
        requests = sum(r.requests for r in runs)
        seconds = sum(r.seconds for r in runs) or 1.0
        cpu = sum(r.sluice_cpu_s for r in runs)
        return cls(
            rps=statistics.median(r.rps for r in runs),
            p50_ms=statistics.median(r.p50_ms for r in runs),
            p99_ms=statistics.median(r.p99_ms for r in runs),
            errors=sum(r.errors for r in runs),
            cpu_us_per_request=cpu / requests * 1e6 if requests else 0.0,
            sluice_core=cpu / seconds,
            load_core=sum(r.fake_cpu_s + r.load_cpu_s for r in runs) / seconds,
            cpu0_others=max(0.0, sum(r.cpu0_busy_s for r in runs) - cpu) / seconds,
        )


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    direct: Summary
    sluice: Summary

    @property
    def added_p50_ms(self) -> float:
        return self.sluice.p50_ms - self.direct.p50_ms

    @property
    def target(self) -> str:
        """PASS/FAIL on the row a target applies to, "" elsewhere."""
        if self.scenario.stream:
            return ""
        failed = self.direct.errors + self.sluice.errors
        if failed:
            return f"INVALID ({failed} failed requests)"
        if self.scenario.concurrency == 1:
            ok = self.added_p50_ms <= TARGET_ADDED_P50_MS
            return f"{'PASS' if ok else 'FAIL'} (added p50 ≤ {TARGET_ADDED_P50_MS:g} ms)"
        ok = self.sluice.rps >= TARGET_RPS
        return f"{'PASS' if ok else 'FAIL'} (≥ {TARGET_RPS:,.0f} req/s)"


@dataclass(frozen=True)
class Settings:
    seconds: float
    rounds: int
    warmup: float
    generator: str  # "wrk" or "aiohttp"


@dataclass(frozen=True)
class Bench:
    """Everything a measurement needs: the running servers and how to call them."""

    settings: Settings
    tmp: Path
    fake: subprocess.Popen[bytes]
    sluice: subprocess.Popen[bytes]
    urls: dict[str, str]  # "direct" (the fake) and "sluice"
    headers: dict[str, str]  # for Sluice; the fake gets the same with a placeholder key


def request_headers(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}


# Subprocesses.


@contextmanager
def spawn(argv: Sequence[str], cpu: str, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv` pinned to `cpu` in its own process group; kill the group on the way out."""
    proc = subprocess.Popen(["taskset", "-c", cpu, *argv], start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(cpu: str) -> float:
    """Non-idle time of one CPU so far, whoever used it, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            ticks = [int(f) for f in fields[1:9]]
            idle = ticks[3] + ticks[4]  # idle and iowait
            return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], T], proc: subprocess.Popen[bytes], what: str, timeout: float = 15.0
) -> T:
    """Poll `check()` until it returns something truthy; fail if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before it was ready")
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within {timeout:g} s")


def start_fake(stack: ExitStack, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    url_file = tmp / "fake-url"
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-fake", str(url_file)]
    proc = stack.enter_context(spawn(argv, LOAD_CPU, cwd=REPO))

    def url() -> str:
        return url_file.read_text().strip() if url_file.exists() else ""

    return proc, wait_until(url, proc, "the fake upstream")


def sluice_command() -> list[str]:
    script = Path(sys.executable).with_name("sluice")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "proxy"]


def sluice_env(fake_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "OPENAI_BASE_URL": fake_url + "/v1",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": fake_url,
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "VLLM_BASE_URLS": fake_url + "/v1",
    }


def copy_policies(tmp: Path) -> Path:
    """The repository's providers and models; its roles and limits are left out on purpose."""
    policies = tmp / "policies"
    policies.mkdir()
    for name in POLICY_FILES:
        shutil.copy(REPO / "policies" / name, policies / name)
    return policies


def authenticates() -> bool:
    """Whether this Sluice has personal tokens (and so requires a credential)."""
    argv = [*sluice_command(), "token", "--help"]
    return subprocess.run(argv, capture_output=True, check=False, cwd=REPO).returncode == 0


def issue_token(policies: Path, data_dir: Path, env: dict[str, str]) -> str:
    """Add a role for the benchmark to the policy copy and issue a personal token with it."""
    (policies / "zz-benchmark-access.yaml").write_text(ACCESS_POLICY)
    argv = [
        *sluice_command(),
        *("token", "issue", "--sub", ROLE, "--role", ROLE, "--ttl", "1d"),
        *("--name", "benchmarks/overhead.py", "--policies", str(policies)),
        *("--data-dir", str(data_dir)),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=REPO)
    lines = done.stdout.split()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"sluice token issue failed: {done.stdout}{done.stderr}")
    return lines[0]


def start_sluice(
    stack: ExitStack, tmp: Path, fake_url: str
) -> tuple[subprocess.Popen[bytes], str, str]:
    """`sluice serve` on the repository's policies, providers pointed at the fake.

    Returns the process, its URL and the credential to call it with.
    """
    policies = copy_policies(tmp)
    # The core proxy: the audit log's cost (an fdatasync before every egress) has its own
    # benchmark, benchmarks/audit.py, against this same setup with the log on.
    (policies / "audit.yaml").write_text(AUDIT_OFF)
    env = {k: v for k, v in sluice_env(fake_url).items() if k != "REDIS_URL"}
    port = free_port()
    argv = [
        *sluice_command(),
        *("serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--policies", str(policies), "--log-level", "warning"),
    ]
    key = PLACEHOLDER_KEY
    if authenticates():
        key = issue_token(policies, tmp / "data", env)
        argv += ["--data-dir", str(tmp / "data")]
    log = stack.enter_context((tmp / "sluice.log").open("wb"))
    proc = stack.enter_context(spawn(argv, SLUICE_CPU, cwd=REPO, env=env, stderr=log))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(url + "/ready") == 200, proc, "sluice")
    except RuntimeError:
        sys.stderr.write((tmp / "sluice.log").read_text())
        raise
    return proc, url, key


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url + PATH, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def smoke_test(base_url: str, headers: dict[str, str]) -> None:
    """One request of each kind, so a misconfiguration fails loudly instead of benchmarking 4xx."""
    for scenario in (SCENARIOS[0], SCENARIOS[2]):
        status, data = post(base_url, scenario.body(), headers)
        if scenario.stream:
            ok = data.rstrip().endswith(b"data: [DONE]") and b'"content":"Hello"' in data
        else:
            ok = b"Hello from the fake upstream" in data
        if status != 200 or not ok:
            raise RuntimeError(f"{base_url} answered {status}: {data[:300]!r}")


# Load generators: each prints one `BENCH {json}` line with the run's numbers.

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {{"requests": %d, "duration_us": %d, "p50_us": %f, "p99_us": %f, "errors": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def wrk_script(path: Path, scenario: Scenario, headers: dict[str, str]) -> Path:
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    path.write_text(WRK_SCRIPT.format(body=scenario.body().decode(), headers=lines))
    return path


def load_command(bench: Bench, target: str, scenario: Scenario, seconds: float) -> list[str]:
    url = bench.urls[target]
    if bench.settings.generator == "wrk":
        script = wrk_script(bench.tmp / f"{target}.lua", scenario, headers_for(bench, target))
        return [
            # wrk takes whole seconds only.
            *(WRK, "-t1", f"-c{scenario.concurrency}", f"-d{max(1, round(seconds))}s"),
            *("--timeout", "5s", "-s", str(script), url + PATH),
        ]
    stream = ["--stream"] if scenario.stream else []
    return [
        *(sys.executable, str(Path(__file__).resolve()), "--load", url),
        *("--concurrency", str(scenario.concurrency), "--seconds", f"{seconds:g}", *stream),
    ]


def headers_for(bench: Bench, target: str) -> dict[str, str]:
    return bench.headers if target == "sluice" else request_headers(PLACEHOLDER_KEY)


def load(bench: Bench, target: str, scenario: Scenario, seconds: float) -> Run:
    """Run the load generator on CPU 1 against `target` and read its numbers."""
    argv = ["taskset", "-c", LOAD_CPU, *load_command(bench, target, scenario, seconds)]
    env = {**os.environ, HEADERS_ENV: json.dumps(headers_for(bench, target))}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, check=False, cwd=REPO, env=env
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            numbers = json.loads(line[6:])
            return Run(
                requests=int(numbers["requests"]),
                seconds=numbers["duration_us"] / 1e6,
                p50_ms=numbers["p50_us"] / 1000,
                p99_ms=numbers["p99_us"] / 1000,
                errors=int(numbers["errors"]),
                # The aiohttp generator reports its own, without its interpreter's start-up.
                load_cpu_s=float(numbers.get("cpu_s", 0.0)),
            )
    raise RuntimeError(f"the load generator failed ({done.returncode}): {done.stderr[-2000:]}")


def children_cpu_seconds() -> float:
    """CPU time of the subprocesses this process has waited for (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(bench: Bench, target: str, scenario: Scenario, seconds: float) -> Run:
    """One run against `target`, with the CPU time each process spent during it."""
    sluice, fake, children, cpu0 = (
        cpu_seconds(bench.sluice.pid),
        cpu_seconds(bench.fake.pid),
        children_cpu_seconds(),
        core_busy_seconds(SLUICE_CPU),
    )
    run = load(bench, target, scenario, seconds)
    return dataclasses.replace(
        run,
        sluice_cpu_s=cpu_seconds(bench.sluice.pid) - sluice,
        fake_cpu_s=cpu_seconds(bench.fake.pid) - fake,
        load_cpu_s=run.load_cpu_s or children_cpu_seconds() - children,
        cpu0_busy_s=core_busy_seconds(SLUICE_CPU) - cpu0,
    )


def measure(bench: Bench, scenario: Scenario) -> Result:
    """Warm both targets, then alternate them round by round (ABBA) so drift hits both alike."""
    settings = bench.settings
    for target in bench.urls:
        load(bench, target, scenario, settings.warmup)
    runs: dict[str, list[Run]] = {target: [] for target in bench.urls}
    per_round = settings.seconds / settings.rounds
    for index in range(settings.rounds):
        order = list(bench.urls) if index % 2 == 0 else list(reversed(bench.urls))
        for target in order:
            runs[target].append(measured(bench, target, scenario, per_round))
    return Result(scenario, Summary.of(runs["direct"]), Summary.of(runs["sluice"]))


def benchmark(settings: Settings) -> tuple[list[Result], bool]:
    """Start the fake and Sluice, measure every scenario; also say whether Sluice authenticated."""
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        fake, fake_url = start_fake(stack, tmp)
        sluice, sluice_url, key = start_sluice(stack, tmp, fake_url)
        bench = Bench(
            settings,
            tmp,
            fake,
            sluice,
            {"direct": fake_url, "sluice": sluice_url},
            request_headers(key),
        )
        smoke_test(fake_url, headers_for(bench, "direct"))
        smoke_test(sluice_url, bench.headers)
        results = []
        for scenario in SCENARIOS:
            print(f"  {scenario.name}, concurrency {scenario.concurrency} ...", file=sys.stderr)
            results.append(measure(bench, scenario))
        return results, key != PLACEHOLDER_KEY


# Report.


def table(results: Sequence[Result]) -> str:
    rows = [
        "| scenario | concurrency | direct req/s | Sluice req/s | Sluice/direct "
        "| direct p50/p99 ms | Sluice p50/p99 ms | added p50 ms "
        "| Sluice CPU µs/req (CPU 0 busy) | CPU 1 busy direct / Sluice | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        d, s = r.direct, r.sluice
        ratio = s.rps / d.rps if d.rps else 0.0
        rows.append(
            f"| {r.scenario.name} | {r.scenario.concurrency} | {d.rps:,.0f} | {s.rps:,.0f} "
            f"| {ratio:.2f} | {d.p50_ms:.2f} / {d.p99_ms:.2f} | {s.p50_ms:.2f} / {s.p99_ms:.2f} "
            f"| {r.added_p50_ms:+.2f} | {s.cpu_us_per_request:,.0f} ({s.sluice_core:.0%}) "
            f"| {d.load_core:.0%} / {s.load_core:.0%} | {r.target} |"
        )
    return "\n".join(rows)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load1 = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {load1:.2f} at the start"
    )


def revision() -> str:
    """The commit measured, and whether proxy/ had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " with uncommitted changes in proxy/" if git("status", "--porcelain", "proxy") else ""
    return f"commit {commit}{dirty}"


def generator_name(generator: str) -> str:
    if generator != "wrk":
        return "an aiohttp client on uvloop (wrk not found)"
    done = subprocess.run([WRK, "--version"], capture_output=True, text=True, check=False)
    version = (done.stdout or done.stderr).split("Copyright")[0].strip()
    return version or "wrk"


def notes(results: Sequence[Result]) -> list[str]:
    """What bounded each row, and any failed requests."""
    lines = []
    for r in results:
        where = f"{r.scenario.name}, concurrency {r.scenario.concurrency}"
        if r.direct.errors or r.sluice.errors:
            lines.append(
                f"- {where}: {r.direct.errors} direct and {r.sluice.errors} Sluice requests "
                "failed (socket errors, timeouts or non-2xx answers)."
            )
        bounds = []
        if r.sluice.sluice_core >= SATURATED:
            bounds.append(f"through Sluice by Sluice's core ({r.sluice.sluice_core:.0%} busy)")
        if r.direct.load_core >= SATURATED:
            bounds.append(
                f"direct by CPU 1, where the fake and the load generator together were "
                f"{r.direct.load_core:.0%} busy"
            )
        if bounds:
            lines.append(f"- {where}: throughput was bounded " + "; ".join(bounds) + ".")
    others = max(r.sluice.cpu0_others for r in results)
    if others >= NOISY:
        lines.append(
            f"- Noise: while Sluice was measured, other processes (and kernel work) used up to "
            f"{others:.0%} of CPU {SLUICE_CPU}; the machine is shared, so Sluice's req/s and "
            "tail latencies here are pessimistic. CPU µs/req is the steadier figure."
        )
    return lines


def section(
    results: Sequence[Result], settings: Settings, started: str, host: str, authenticated: bool
) -> str:
    gen = generator_name(settings.generator)
    auth = (
        "Requests to Sluice carry a personal token issued for the run (`sluice token issue`, "
        "local token store, a role granting `gpt-4o`), so authentication and authorization "
        "run on every request. "
        if authenticated
        else "This Sluice does not authenticate; requests carry a placeholder bearer key. "
    )
    return "\n".join(
        [
            SECTION_START,
            "## Overhead: Sluice vs. direct to the upstream",
            "",
            "What: requests per second and p50/p99 latency of `POST /v1/chat/completions` "
            '(model `gpt-4o`, one short user message; streaming adds `"stream": true`), sent '
            "directly to a fake OpenAI upstream (`proxy.testing.FakeOpenAI` on uvloop) and "
            "through Sluice to the same fake, back to back in the same run, at concurrency 1 "
            "and 16. Added p50 is Sluice's p50 minus direct p50.",
            "",
            "How: `sluice serve --log-level warning` with the repository's "
            f"`policies/{{{','.join(POLICY_FILES)}}}` (providers pointed at the fake; no "
            "rate limits; audit log off: its cost is measured below) runs alone on "
            f"CPU {SLUICE_CPU} (`taskset`); the "
            f"fake and the load generator ({gen}, one thread, one connection per concurrent "
            f"request) share CPU {LOAD_CPU}. {auth}Each scenario warms both targets for "
            f"{settings.warmup:g} s, then alternates them over {settings.rounds} rounds of "
            f"{settings.seconds / settings.rounds:g} s each (ABBA order); the table shows the "
            'median round. CPU µs/req is Sluice\'s user+system CPU time per request; "busy" is '
            "the CPU time the processes on a core used, as a share of the run's wall time. "
            "Direct, a request never leaves CPU 1; through Sluice it crosses cores twice, and "
            "the added latency includes those wake-ups, as it would in a real deployment.",
            "",
            f"Machine: {host}. Run {started}, Sluice at {revision()}.",
            "",
            f"Command: `{COMMAND}`",
            "",
            table(results),
            "",
            f"Targets: non-streaming at concurrency 1, added p50 ≤ {TARGET_ADDED_P50_MS:g} ms; "
            f"at concurrency 16 on one core, ≥ {TARGET_RPS:,.0f} req/s through Sluice. "
            + LITELLM_NOTE,
            *(["", *notes(results)] if notes(results) else []),
            SECTION_END,
        ]
    )


DOC_INTRO = """\
# Benchmarks

Each section below is written by a script in `benchmarks/`, between its own
`<!-- name:start -->` and `<!-- name:end -->` markers; rerun the script to refresh it.
The machine is shared, so compare numbers within one section (one run), not across runs.
"""


def write_section(
    text: str, doc: Path = DOC, markers: tuple[str, str] = (SECTION_START, SECTION_END)
) -> None:
    """Replace a benchmark's section (between `markers`) in `doc`, or append it; create the
    file if missing. The other benchmarks in benchmarks/ use this with their own markers."""
    current = doc.read_text() if doc.exists() else DOC_INTRO
    section_start, section_end = markers
    start, end = current.find(section_start), current.find(section_end)
    if start >= 0 and end > start:
        updated = current[:start] + text + current[end + len(section_end) :]
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(updated)


# Helper modes, run as subprocesses of the benchmark.


def publish(url_file: Path, url: str) -> None:
    """Write `url` so that a reader polling the file never sees half of it."""
    partial = url_file.with_suffix(".partial")
    partial.write_text(url)
    partial.replace(url_file)


def serve_fake(url_file: Path) -> int:
    """Run a FakeOpenAI until killed; write its URL to `url_file` once it listens."""
    import uvloop

    sys.path.insert(0, str(REPO))
    from proxy.testing import FakeOpenAI

    async def serve() -> None:
        async with FakeOpenAI() as fake:
            await asyncio.to_thread(publish, url_file, fake.url)
            while True:
                await asyncio.sleep(1)
                fake.received.clear()  # the fake records every request; keep memory flat

    uvloop.run(serve())
    return 0


def client_load(url: str, concurrency: int, seconds: float, stream: bool) -> int:
    """The fallback load generator: `concurrency` aiohttp clients in a loop for `seconds`."""
    import uvloop

    numbers = uvloop.run(_client_load(url + PATH, Scenario(stream, concurrency), seconds))
    print("BENCH " + json.dumps(numbers))
    return 0


async def _client_load(url: str, scenario: Scenario, seconds: float) -> dict[str, float]:
    import aiohttp

    body, latencies, errors = scenario.body(), [], 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=scenario.concurrency)
    headers = json.loads(os.environ[HEADERS_ENV])
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < deadline:
                try:
                    async with session.post(url, data=body) as response:
                        await response.read()
                        ok = response.status < 400
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(scenario.concurrency)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    latencies.sort()

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6 if latencies else 0

    return {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
        "errors": errors,
        "cpu_s": cpu,
    }


# Entry point.


def use_venv(script: str = __file__) -> None:
    """Re-run `script` (this one unless told) under the project's virtualenv when started
    with another Python."""
    python = VENV / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(python, [str(python), str(Path(script).resolve()), *sys.argv[1:]])


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so the `finally` blocks stop the subprocesses."""

    def handler(signum: int, frame: object) -> NoReturn:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds",
        type=float,
        default=12.0,
        help="measured seconds per target per scenario (default 12)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (default 3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (default 2)")
    parser.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--serve-fake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    use_venv()
    args = parse_args(argv)
    if args.serve_fake:
        return serve_fake(args.serve_fake)
    if args.load:
        return client_load(args.load, args.concurrency, args.seconds, args.stream)
    exit_on_sigterm()
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if Path(WRK).exists() else "aiohttp"
    settings = Settings(args.seconds, max(1, args.rounds), args.warmup, generator)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = machine()
    results, authenticated = benchmark(settings)
    text = section(results, settings, started, host, authenticated)
    print(table(results))
    if not args.no_write:
        write_section(text)
        print(f"wrote {DOC.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
