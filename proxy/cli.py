"""The `sluice` command: `serve`, `policy check|test|explain|diff|replay`,
`token issue|list|revoke` and `audit verify|search|export` for admins, and `dashboard reindex`.

Exit codes: 0 success, 1 a problem the user can fix (the message says which), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from proxy.identity.tokens import (
    TokenRecord,
    TokenStoreUnavailable,
    new_record,
    new_token,
    open_token_store,
    token_hash,
)
from proxy.log import configure_logging
from proxy.policy.commands import add_workflow_commands, run_workflow_command
from proxy.policy.loader import LoadedPolicy, PolicyError, load_policy
from proxy.settings import Settings

if TYPE_CHECKING:
    from proxy.policy.store import PolicyStore

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluice", description="AI governance gateway")
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = Settings.from_env()

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--policies", type=Path, default=Path("policies"))
    _data_dir_option(serve, defaults)
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to look for changed policy files; 0 reloads on SIGHUP only",
    )
    serve.add_argument("--log-level", default="info")
    serve.add_argument(
        "--shadow-policies",
        type=Path,
        default=os.environ.get("SLUICE_SHADOW_POLICIES") or None,
        metavar="DIR",
        help="also judge every call by this policy, without enforcing it; env "
        "SLUICE_SHADOW_POLICIES",
    )

    policy = commands.add_parser("policy", help="work with policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate a policy directory")
    check.add_argument("directory", nargs="?", type=Path, default=Path("policies"))
    add_workflow_commands(policy_commands)

    token = commands.add_parser(
        "token", help="personal tokens (stored in Redis when REDIS_URL is set)"
    )
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="issue a token and print it once")
    issue.add_argument("--sub", required=True, help="the person or service it belongs to")
    issue.add_argument("--role", action="append", required=True, help="a role (repeatable)")
    issue.add_argument("--ttl", default="90d", help="lifetime: 30d, 12h, 2w, ... (default 90d)")
    issue.add_argument("--models", action="append", help="narrow to these model globs")
    issue.add_argument("--name", help="a label, e.g. the device or tool")
    issue.add_argument("--policies", type=Path, default=Path("policies"))
    _data_dir_option(issue, defaults)
    listing = token_commands.add_parser("list", help="list tokens (never their values)")
    listing.add_argument("--sub")
    listing.add_argument("--json", action="store_true")
    _data_dir_option(listing, defaults)
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id")
    _data_dir_option(revoke, defaults)

    dashboard = commands.add_parser("dashboard", help="the security dashboard")
    dashboard_commands = dashboard.add_subparsers(dest="dashboard_command", required=True)
    reindex = dashboard_commands.add_parser(
        "reindex", help="rebuild the dashboard's index from the audit segments"
    )
    reindex.add_argument("--policies", type=Path, default=Path("policies"))
    reindex.add_argument(
        "--audit-dir", type=Path, help="default: the policy's, or <data dir>/audit"
    )
    _data_dir_option(reindex, defaults)
    dashboard_serve = dashboard_commands.add_parser(
        "serve", help="serve the dashboard as a process of its own (no model endpoints)"
    )
    dashboard_serve.add_argument("--host", default="127.0.0.1")
    dashboard_serve.add_argument("--port", type=int, default=8081)
    dashboard_serve.add_argument("--policies", type=Path, default=Path("policies"))
    dashboard_serve.add_argument(
        "--audit-dir", type=Path, help="default: the policy's, or <data dir>/audit"
    )
    dashboard_serve.add_argument("--log-level", default="info")
    _data_dir_option(dashboard_serve, defaults)

    _audit_commands(commands, defaults)

    args = parser.parse_args(argv)
    if args.command == "audit":
        return _audit(args, defaults)
    if args.command == "dashboard":
        settings = dataclasses.replace(defaults, data_dir=args.data_dir)
        if args.dashboard_command == "serve":
            return _dashboard_serve(args, settings)
        return _dashboard_reindex(args.policies, args.audit_dir, settings)
    if args.command == "serve":
        settings = dataclasses.replace(defaults, data_dir=args.data_dir)
        return _serve(args.host, args.port, args.policies, settings, args)
    if args.command == "policy":
        if args.policy_command == "check":
            return _policy_check(args.directory)
        return run_workflow_command(args)
    settings = dataclasses.replace(defaults, data_dir=args.data_dir)
    try:
        if args.token_command == "issue":
            return asyncio.run(_token_issue(args, settings))
        if args.token_command == "list":
            return asyncio.run(_token_list(args.sub, args.json, settings))
        return asyncio.run(_token_revoke(args.id, settings))
    except TokenStoreUnavailable as exc:
        print(f"sluice: the token store cannot be reached ({exc})", file=sys.stderr)
        return 1


def _audit_commands(commands: argparse._SubParsersAction[Any], defaults: Settings) -> None:
    audit = commands.add_parser("audit", help="check and read the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", help="check every hash and the chain; exit 1 naming what is wrong"
    )
    verify.add_argument("directory", nargs="?", type=Path, help="default: <data dir>/audit")
    verify.add_argument(
        "--progress",
        action="store_true",
        help="report progress on stderr (the default when stderr is a terminal)",
    )
    verify.add_argument("--json", action="store_true", help="the report as JSON")
    verify.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="a record known from outside the log (an earlier verify's last seq and hash, or "
        "an audit_head log event) that must still be in it; repeatable",
    )
    verify.add_argument(
        "--anchors",
        type=Path,
        metavar="FILE",
        help="anchors from a file: SEQ:HASH lines, or JSON log lines (audit_head events)",
    )
    verify.add_argument("--policies", type=Path, default=Path("policies"))
    _data_dir_option(verify, defaults)
    search = audit_commands.add_parser("search", help="records matching filters, as JSONL")
    export = audit_commands.add_parser("export", help="records for a SIEM, as JSONL or CSV")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", type=Path, help="a file instead of stdout")
    for sub, kind in ((search, "response"), (export, "any")):
        sub.add_argument("--dir", type=Path, help="audit directory; default: <data dir>/audit")
        sub.add_argument("--user", help="the caller's subject")
        sub.add_argument("--role")
        sub.add_argument("--model", help="requested, routed or answering model")
        sub.add_argument("--level", choices=("public", "internal", "confidential", "restricted"))
        sub.add_argument(
            "--decision",
            choices=("allowed", "masked", "rerouted", "blocked", "denied", "failed"),
        )
        sub.add_argument("--since", help="ISO 8601 time, epoch seconds, or a duration ago (7d)")
        sub.add_argument("--until", help="ISO 8601 time, epoch seconds, or a duration ago")
        sub.add_argument(
            "--kind",
            choices=("request", "response", "any"),
            default=kind,
            help=f"which records (default {kind}); level and decision are on responses",
        )
        sub.add_argument("--policies", type=Path, default=Path("policies"))
        _data_dir_option(sub, defaults)


def _audit(args: argparse.Namespace, defaults: Settings) -> int:
    from proxy.audit.search import Query, search, write_csv, write_jsonl
    from proxy.audit.verify import read_anchors, verify

    settings = dataclasses.replace(defaults, data_dir=args.data_dir)
    if args.audit_command == "verify":
        directory = args.directory or _audit_dir(settings, args.policies)
        if not directory.is_dir():
            print(f"sluice: {directory} is not a directory", file=sys.stderr)
            return 1
        try:
            from_file = args.anchors.read_text().splitlines() if args.anchors else []
            anchors = read_anchors(from_file + args.anchor)
        except (OSError, ValueError) as exc:
            print(f"sluice: {exc}", file=sys.stderr)
            return 2
        show = args.progress or sys.stderr.isatty()
        report = verify(
            directory,
            settings.audit_hmac_key,
            progress=_print_progress if show else None,
            anchors=anchors,
        )
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": report.ok,
                        "problems": [dataclasses.asdict(p) for p in report.problems],
                        "problem_count": report.problem_count,
                        "segments": report.segments,
                        "records": report.records,
                        "bytes": report.bytes,
                        "last_seq": report.last_seq,
                        "last_hash": report.last_hash,
                        "anchors_checked": report.anchors_checked,
                        "anchors_retired": report.anchors_retired,
                    }
                )
            )
        else:
            for problem in report.problems:
                print(problem)
        megabytes = report.bytes / 1e6
        summary = (
            f"{report.records} record(s) in {report.segments} segment(s), {megabytes:.1f} MB "
            f"in {report.seconds:.2f} s; last record {report.last_seq}:{report.last_hash} "
            "(keep it: a --anchor for later runs)"
        )
        if anchors:
            summary += (
                f"; {report.anchors_checked} of {len(anchors)} anchor(s) found, "
                f"{report.anchors_retired} deleted by retention"
            )
        if report.ok:
            print(f"ok: {summary}", file=sys.stderr)
            return 0
        print(f"FAILED: {report.problem_count} problem(s); {summary}", file=sys.stderr)
        return 1
    try:
        query = Query(
            user=args.user,
            role=args.role,
            model=args.model,
            level=args.level,
            decision=args.decision,
            since=_time_arg(args.since),
            until=_time_arg(args.until),
            kind=args.kind,
        )
    except ValueError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
    directory = args.dir or _audit_dir(settings, args.policies)
    if not directory.is_dir():
        print(f"sluice: {directory} is not a directory", file=sys.stderr)
        return 1
    records = search(directory, query)
    if args.audit_command == "search":
        write_jsonl(records, sys.stdout)
        return 0
    write = write_csv if args.format == "csv" else write_jsonl
    if args.output is None:
        write(records, sys.stdout)
        return 0
    with args.output.open("w", newline="" if args.format == "csv" else None) as out:
        count = write(records, out)
    print(f"{count} record(s) written to {args.output}", file=sys.stderr)
    return 0


def _audit_dir(settings: Settings, policies: Path) -> Path:
    """The directory `serve` writes to: the policy's `audit.dir` when it sets one."""
    configured: str | None = None
    try:
        configured = load_policy(policies).policy.audit.dir
    except (PolicyError, OSError):
        configured = None
    return settings.audit_dir(configured)


def _print_progress(done: int, total: int) -> None:
    share = done / total * 100 if total else 100.0
    print(f"verified {done / 1e6:.0f} of {total / 1e6:.0f} MB ({share:.0f}%)", file=sys.stderr)


def _time_arg(text: str | None) -> float | None:
    """ISO 8601 (UTC when no zone is given), epoch seconds, or a duration before now."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    if _DURATION.match(text.strip()):
        return time.time() - parse_duration(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601, epoch seconds or e.g. 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _data_dir_option(parser: argparse.ArgumentParser, defaults: Settings) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=defaults.data_dir,
        help="local state (token store) when REDIS_URL is not set; env SLUICE_DATA_DIR",
    )


def _load_or_report(directory: Path) -> LoadedPolicy | None:
    try:
        return load_policy(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) in {directory}", file=sys.stderr)
        return None


def _policy_check(directory: Path) -> int:
    loaded = _load_or_report(directory)
    if loaded is None:
        return 1
    policy = loaded.policy
    print(
        f"ok: {len(loaded.files)} file(s), {len(policy.providers)} provider(s), "
        f"{len(policy.models)} model(s), {len(policy.roles)} role(s); "
        f"version {loaded.version[:12]}"
    )
    return 0


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 2w)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


async def _token_issue(args: argparse.Namespace, settings: Settings) -> int:
    loaded = _load_or_report(args.policies)
    if loaded is None:
        return 1
    roles = tuple(dict.fromkeys(args.role))
    unknown = [r for r in roles if r not in loaded.policy.roles]
    if unknown:
        known = ", ".join(sorted(loaded.policy.roles)) or "none"
        print(f"sluice: unknown role(s) {', '.join(unknown)}; policy defines: {known}")
        return 1
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        print(f"sluice: {exc}")
        return 1
    max_days = loaded.policy.identity.personal_tokens.max_ttl_days
    if ttl > max_days * 86400:
        print(f"sluice: --ttl exceeds the policy's max_ttl_days ({max_days})")
        return 1
    token = new_token()
    models = tuple(args.models) if args.models else None
    record = new_record(args.sub, roles, ttl_seconds=ttl, models=models, name=args.name)
    store = open_token_store(settings.redis_url, settings.data_dir)
    try:
        await store.add(token_hash(token), record)
    finally:
        await store.close()
    print(token)
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.expires_at or 0))
    print(f"id {record.id} for {record.subject}, expires {expires}", file=sys.stderr)
    print("This is the only time the token is shown; store it now.", file=sys.stderr)
    return 0


def _describe(record: TokenRecord) -> dict[str, object]:
    now = time.time()
    state = "active" if record.usable_at(now) else ("revoked" if record.revoked_at else "expired")
    return {**dataclasses.asdict(record), "state": state}


async def _token_list(subject: str | None, as_json: bool, settings: Settings) -> int:
    store = open_token_store(settings.redis_url, settings.data_dir)
    try:
        records = await store.list(subject)
    finally:
        await store.close()
    if as_json:
        print(json.dumps([_describe(r) for r in records], indent=2))
        return 0
    for record in records:
        info = _describe(record)
        expires = (
            time.strftime("%Y-%m-%d", time.gmtime(record.expires_at))
            if record.expires_at
            else "never"
        )
        print(
            f"{record.id}  {info['state']:<8} {record.subject}  roles={','.join(record.roles)}"
            f"  expires={expires}  name={record.name or '-'}"
        )
    return 0


async def _token_revoke(token_id: str, settings: Settings) -> int:
    store = open_token_store(settings.redis_url, settings.data_dir)
    try:
        record = await store.revoke(token_id)
    finally:
        await store.close()
    if record is None:
        print(f"sluice: no token with id {token_id}")
        return 1
    print(f"revoked {record.id} ({record.subject})")
    return 0


def _dashboard_reindex(policies: Path, audit_dir: Path | None, settings: Settings) -> int:
    """Rebuild the index while Sluice is stopped (a running Sluice rebuilds on its own when
    the index is missing or corrupt)."""
    from proxy.dashboard import audit_dir as policy_audit_dir
    from proxy.dashboard import index_path
    from proxy.dashboard.index import BATCH_RECORDS, AuditIndex

    if audit_dir is None:
        loaded = _load_or_report(policies)
        if loaded is None:
            return 1
        audit_dir = policy_audit_dir(loaded.policy, settings)
    if not audit_dir.is_dir():
        print(f"sluice: no audit directory at {audit_dir}", file=sys.stderr)
        return 1
    index = AuditIndex(index_path(settings), audit_dir)
    started, total = time.monotonic(), 0
    try:
        index.rebuild()
        while (read := index.catch_up()) > 0:
            total += read
            if read >= BATCH_RECORDS:
                print(f"{total:,} records indexed", file=sys.stderr)
        chain = index.chain()
    finally:
        index.close()
    state = "intact" if chain.ok else f"BROKEN at {chain.problem}"
    print(
        f"indexed {total:,} records from {audit_dir} in {time.monotonic() - started:.1f} s;"
        f" chain {state}"
    )
    return 0


def _open_store(directory: Path) -> PolicyStore | None:
    """The policy store a server starts on; None, with every problem printed, when the policy
    does not load (a server never starts without a good policy)."""
    from proxy.policy.store import PolicyStore

    try:
        return PolicyStore.open(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"sluice: the policy in {directory} does not load; not starting", file=sys.stderr)
        return None


def _dashboard_serve(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.app import run
    from proxy.dashboard.server import build_dashboard_app

    configure_logging(args.log_level)
    store = _open_store(args.policies)
    if store is None:
        return 1
    run(build_dashboard_app(store, settings, audit_dir=args.audit_dir), args.host, args.port)
    return 0


def _serve(
    host: str, port: int, directory: Path, settings: Settings, args: argparse.Namespace
) -> int:
    from proxy.app import build_app, run

    configure_logging(args.log_level)
    stores: list[PolicyStore] = []
    for source in (directory, args.shadow_policies):
        if source is None:
            continue
        store = _open_store(Path(source))
        if store is None:
            return 1
        stores.append(store)
    store, shadow_store = stores[0], (stores[1] if len(stores) > 1 else None)
    log = structlog.get_logger("sluice")
    log.info(
        "starting",
        host=host,
        port=port,
        policy_version=store.current.version,
        shadow_policy_version=shadow_store.current.version if shadow_store else None,
        token_store="redis" if settings.redis_url else "local",
    )
    app = build_app(
        store,
        settings,
        watch_interval=args.reload_interval,
        reload_on_sighup=True,
        shadow_store=shadow_store,
    )
    run(app, host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
