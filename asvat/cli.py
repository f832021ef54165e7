"""The ``asvat`` command.

asvat up [--demo]          everything on the embedded default (or ASVAT_KAFKA_BOOTSTRAP)
asvat worker               the repeat-detector faust worker
asvat ingest               the ingest HTTP service (127.0.0.1:8001)
asvat api                  the API (127.0.0.1:8000)
asvat replay ...           the engine offline over an NDJSON file
asvat backtest --policy A --policy B --input EVENTS --output DIR
                           one history under several policies, compared (report.md/html)
asvat report recording-quality --input EVENTS [--output CSV]
asvat topics create        create the Kafka topics on ASVAT_KAFKA_BOOTSTRAP
asvat demo-feed            post the demo incidents to a running ingest
asvat ingest-file FILE --format ndjson|csv|police-uk|bus-feedback [--mapping MAP.yaml]
                           load a file through the ingest path (resumable)
asvat dlq list | replay [--reason R] [--source S]
                           dead letters: counts by reason, re-submit after a fix
asvat config [--markdown]  the settings and their environment variables
asvat retention run [--dry-run]
                           purge personal data past the policy's retention (audited)
asvat db upgrade|current   migrate the API database (Alembic) / show its revision
asvat token create --role ROLE [--name NAME] | list | revoke ID
                           bearer tokens for the API and ingest (last line: the token)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from asvat.domain.policy import Policy, PolicyError
from asvat.settings import Settings, load_settings


def _policy(args: argparse.Namespace, settings: Settings) -> Policy:
    from asvat.policy import load_policy

    path = getattr(args, "policy", None) or settings.policy
    return load_policy(Path(path) if path else None)


def _add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="detection policy YAML (default: ASVAT_POLICY, else the shipped default)",
    )


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from asvat.keys import load_key_ring
    from asvat.supervisor import run_up

    policy_path = args.policy or settings.policy
    _policy(args, settings)  # validate before starting anything
    if settings.env == "production":
        load_key_ring(settings)  # so is the HMAC key (ingest would refuse it later)
    return run_up(settings, policy_path=policy_path, demo=args.demo, demo_rate=args.rate)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from asvat.runtime import tune_gc
    from services.repeat_detector.main import run

    policy = _policy(args, settings)
    tune_gc()
    return run(settings, policy)


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingest.main import run

    return run(settings, _policy(args, settings))


def _cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from services.api.main import run

    run(settings)
    return 0


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from asvat.keys import load_hmac_key
    from asvat.replay import replay

    policy = _policy(args, settings)
    if not args.input.is_file():
        print(f"replay: --input {args.input}: no such file", file=sys.stderr)
        return 2
    key, key_id = load_hmac_key(settings)
    code, _summary = replay(
        policy,
        args.input,
        args.output,
        key=key,
        key_id=key_id,
        skip_invalid=args.skip_invalid,
        progress=not args.no_progress,
    )
    return code


def _cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from asvat.backtest import backtest
    from asvat.keys import load_hmac_key
    from asvat.policy import load_policy

    if len(args.policy) < 2:
        print("backtest: give at least two --policy files", file=sys.stderr)
        return 2
    if not args.input.is_file():
        print(f"backtest: --input {args.input}: no such file", file=sys.stderr)
        return 2
    named: list[tuple[str, Policy]] = []
    for path in args.policy:
        name = path.stem
        while name in {n for n, _ in named}:
            name += "'"
        named.append((name, load_policy(path)))
    key, key_id = load_hmac_key(settings)
    doc, md, html = backtest(named, args.input, args.output, key=key, key_id=key_id)
    print(
        f"backtest: {doc['events']} events under {len(named)} policies in "
        f"{doc['seconds_total']:.1f} s ({doc['cpu_seconds_total']:.1f} s of CPU); "
        f"report: {md} and {html}"
    )
    return 0


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from asvat.keys import load_hmac_key
    from asvat.recording_quality import CSV_COLUMNS, as_csv, report_from_file

    if not args.input.is_file():
        print(f"report: --input {args.input}: no such file", file=sys.stderr)
        return 2
    key, key_id = load_hmac_key(settings)
    rows, bad = report_from_file(args.input, _policy(args, settings), key=key, key_id=key_id)
    text = as_csv(rows, CSV_COLUMNS)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"report: {len(rows)} rows ({bad} invalid lines skipped) in {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from asvat.embedded.broker import ensure_all_topics, wait_for_broker

    wait_for_broker(settings.bootstrap, timeout=args.wait)
    ensure_all_topics(settings.bootstrap, settings.topic_partitions)
    print(f"topics ready on {settings.bootstrap}")
    return 0


def _cmd_demo_feed(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from asvat.demo import demo_burst, feed, northumbria_incidents

    url = args.url or f"http://{settings.ingest_host}:{settings.ingest_port}"
    now = datetime.now(tz=UTC)
    # The year is shifted to end now, so that it lies within the policy's max_lateness.
    events = demo_burst(seed=args.seed, end=now) + northumbria_incidents(
        seed=args.seed, shift_to=now, limit=args.limit
    )
    token = args.token or os.environ.get("ASVAT_INGEST_TOKEN")
    if not token:
        print(
            "asvat demo-feed: give a token of role ingest with --token or ASVAT_INGEST_TOKEN "
            "(make one with: asvat token create --role ingest)",
            file=sys.stderr,
        )
        return 2
    accepted = feed(url, events, rate_per_s=args.rate, token=token)
    print(f"demo feed: {accepted} events accepted by {url}")
    return 0


def _cmd_ingest_file(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingest.commands import run_ingest_file

    return run_ingest_file(
        settings,
        _policy(args, settings),
        args.file,
        args.format,
        mapping_path=args.mapping,
        restart=args.restart,
        progress=not args.no_progress,
    )


def _cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    from services.ingest.commands import run_dlq_list, run_dlq_replay

    if args.dlq_command == "list":
        return run_dlq_list(settings)
    return run_dlq_replay(settings, _policy(args, settings), reason=args.reason, source=args.source)


def _cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from services.api.db import make_engine
    from services.api.migrate import current, head, upgrade

    engine = make_engine(settings.resolved_database_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        if args.db_command == "current":
            print(f"{where}: revision {current(engine) or '(none)'} (newest: {head()})")
            return 0
        before, after = upgrade(engine)
        print(f"{where}: {before or '(empty)'} -> {after}")
        return 0
    except Exception as exc:  # the database's own error says what is wrong
        print(f"asvat db: {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from services.api import tokens
    from services.api.db import make_engine, make_writer_factory
    from services.api.migrate import upgrade

    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)  # a fresh data directory works at once
        with make_writer_factory(engine).begin() as session:
            if args.token_command == "create":
                row, token = tokens.create(
                    session=session, role=args.role, name=args.name, created_by="asvat token"
                )
                print(f"token {row.token_id} ({row.role}) named {row.name!r}; shown once:")
                print(token)
            elif args.token_command == "revoke":
                row = tokens.revoke(session=session, which=args.which, revoked_by="asvat token")
                print(f"revoked {row.token_id} ({row.role}) named {row.name!r}")
            else:
                print(f"{'id':<16} {'role':<10} {'created':<20} {'revoked':<20} name")
                for row in tokens.list_tokens(session=session):
                    revoked = f"{row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "-"
                    print(
                        f"{row.token_id:<16} {row.role:<10} "
                        f"{row.created_at:%Y-%m-%d %H:%M:%S}  {revoked:<20} {row.name}"
                    )
        return 0
    except tokens.TokenError as exc:
        print(f"asvat token: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    from services.api.db import make_engine, make_writer_factory
    from services.api.migrate import upgrade
    from services.api.retention import purge

    retention = _policy(args, settings).retention
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
        report = purge(
            session_factory=make_writer_factory(engine),
            retention=retention,
            dry_run=args.dry_run,
            actor="asvat retention run",
        )
    except Exception as exc:  # the database's own error says what is wrong
        where = engine.url.render_as_string(hide_password=True)
        print(f"asvat retention: {where}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(report.summary())
    return 0


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print("| variable | default | meaning |")
        print("|---|---|---|")
        for name, info in Settings.model_fields.items():
            description = info.description or ""
            variable, _, meaning = description.partition(": ")
            default = info.default
            shown = "(unset)" if default is None else f"`{default}`"
            print(f"| `{variable or 'ASVAT_' + name.upper()}` | {shown} | {meaning} |")
        return 0
    for name, value in settings.model_dump().items():
        secret = name in ("hmac_key", "hmac_previous_keys")
        shown = "(set)" if secret and value else value
        print(f"ASVAT_{name.upper()}={shown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asvat", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start broker (embedded unless ASVAT_KAFKA_BOOTSTRAP), worker, ingest and API"
    )
    _add_policy(up)
    up.add_argument(
        "--demo", action="store_true", help="also feed the demo incidents (real Northumbria data)"
    )
    up.add_argument("--rate", type=float, default=40.0, help="demo feed rate, events per second")
    up.set_defaults(func=_cmd_up)

    worker = sub.add_parser("worker", help="run the repeat-detector worker")
    _add_policy(worker)
    worker.set_defaults(func=_cmd_worker)

    ingest = sub.add_parser("ingest", help="run the ingest HTTP service")
    _add_policy(ingest)
    ingest.set_defaults(func=_cmd_ingest)

    api = sub.add_parser("api", help="run the API")
    api.set_defaults(func=_cmd_api)

    rep = sub.add_parser(
        "replay", help="run the engine offline over an NDJSON file of incident events"
    )
    _add_policy(rep)
    rep.add_argument(
        "--input", type=Path, required=True, help="NDJSON incident events (contract v1)"
    )
    rep.add_argument(
        "--output", type=Path, required=True, help="where to write one assessment per line"
    )
    rep.add_argument(
        "--skip-invalid", action="store_true", help="exit 0 even if some lines were invalid"
    )
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.set_defaults(func=_cmd_replay)

    back = sub.add_parser(
        "backtest", help="replay one history under two or more policies and compare them"
    )
    back.add_argument(
        "--policy",
        type=Path,
        action="append",
        required=True,
        help="a policy YAML (give two or more; the first is the baseline)",
    )
    back.add_argument("--input", type=Path, required=True, help="NDJSON incident events")
    back.add_argument("--output", type=Path, required=True, help="directory for the report")
    back.set_defaults(func=_cmd_backtest)

    report = sub.add_parser("report", help="offline reports over NDJSON incident events")
    report_sub = report.add_subparsers(dest="report_command", required=True)
    quality = report_sub.add_parser(
        "recording-quality", help="classification at opening vs closing, integrity, by team"
    )
    _add_policy(quality)
    quality.add_argument("--input", type=Path, required=True, help="NDJSON incident events")
    quality.add_argument("--output", type=Path, default=None, help="CSV file (default: stdout)")
    quality.set_defaults(func=_cmd_report)

    topics = sub.add_parser("topics", help="manage Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser("create", help="create every asvat topic (idempotent)")
    create.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the broker")
    create.set_defaults(func=_cmd_topics)

    demo = sub.add_parser("demo-feed", help="post the demo incidents to a running ingest service")
    demo.add_argument("--url", default=None, help="ingest base URL (default from settings)")
    demo.add_argument("--rate", type=float, default=40.0, help="events per second")
    demo.add_argument("--seed", type=int, default=2022)
    demo.add_argument(
        "--token", default=None, help="token of role ingest (default: ASVAT_INGEST_TOKEN)"
    )
    demo.add_argument(
        "--limit", type=int, default=None, help="at most this many Northumbria incidents"
    )
    demo.set_defaults(func=_cmd_demo_feed)

    load = sub.add_parser(
        "ingest-file", help="load a file of incidents through the ingest path into Kafka"
    )
    _add_policy(load)
    load.add_argument("file", type=Path, help="the file to load")
    load.add_argument(
        "--format", required=True, choices=("ndjson", "csv", "police-uk", "bus-feedback")
    )
    load.add_argument("--mapping", type=Path, default=None, help="column mapping YAML (csv)")
    load.add_argument(
        "--restart", action="store_true", help="ignore the checkpoint and load from the start"
    )
    load.add_argument("--no-progress", action="store_true", help="no progress bar")
    load.set_defaults(func=_cmd_ingest_file)

    dlq = sub.add_parser("dlq", help="dead letters on asvat.incidents.dlq.v1")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_sub.add_parser("list", help="outstanding dead letters by source and reason").set_defaults(
        func=_cmd_dlq
    )
    dlq_replay = dlq_sub.add_parser("replay", help="re-submit outstanding dead letters")
    _add_policy(dlq_replay)
    dlq_replay.add_argument("--reason", default=None, help="only this reason code")
    dlq_replay.add_argument("--source", default=None, help="only this source")
    dlq_replay.set_defaults(func=_cmd_dlq)

    db = sub.add_parser("db", help="the API database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate to the newest schema").set_defaults(func=_cmd_db)
    db_sub.add_parser("current", help="show the schema revision").set_defaults(func=_cmd_db)

    from asvat.auth import ROLES

    token = sub.add_parser("token", help="bearer tokens for the API and ingest")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create_token = token_sub.add_parser("create", help="make a token; prints it last, once")
    create_token.add_argument("--role", required=True, choices=ROLES)
    create_token.add_argument("--name", default=None, help="who or what it is for (audit trail)")
    create_token.set_defaults(func=_cmd_token)
    token_sub.add_parser("list", help="every token (never the token)").set_defaults(func=_cmd_token)
    revoke = token_sub.add_parser("revoke", help="revoke a token by id (or unique name)")
    revoke.add_argument("which", help="token id (tok_…) or name")
    revoke.set_defaults(func=_cmd_token)

    retention = sub.add_parser("retention", help="purge personal data past the policy's retention")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    retention_run = retention_sub.add_parser(
        "run", help="remove what is past retention now and record it in the audit trail"
    )
    _add_policy(retention_run)
    retention_run.add_argument(
        "--dry-run", action="store_true", help="only count what would be removed"
    )
    retention_run.set_defaults(func=_cmd_retention)

    native = sub.add_parser(
        "native", help="the domain core compiled with mypyc: build, status or clean"
    )
    native.add_argument("action", choices=["build", "status", "clean"])
    native.add_argument(
        "--required", action="store_true", help="build: fail (exit 1) when it cannot compile"
    )
    native.add_argument("-v", "--verbose", action="store_true", help="build: show the compiler")
    native.set_defaults(func=_cmd_native)

    checkpoint = sub.add_parser(
        "checkpoint", help="a worker's checkpoint: what it holds, and whether a restart loads it"
    )
    checkpoint.add_argument("action", choices=["show"])
    checkpoint.add_argument(
        "--dir", type=Path, default=None,
        help="the checkpoint directory (default: ASVAT_WORKER_CHECKPOINT_DIR, else "
        "<ASVAT_DATA_DIR>/worker/checkpoint-<ASVAT_WORKER_PORT>)",
    )
    checkpoint.add_argument(
        "--partitions", type=int, default=None,
        help="partitions of asvat.incidents.v1 (default: ASVAT_TOPIC_PARTITIONS)",
    )
    checkpoint.add_argument("--json", action="store_true", help="the report as JSON")
    _add_policy(checkpoint)
    checkpoint.set_defaults(func=_cmd_checkpoint)

    config = sub.add_parser("config", help="show the settings")
    config.add_argument("--markdown", action="store_true", help="the README's configuration table")
    config.set_defaults(func=_cmd_config)
    return parser


def _cmd_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    """Describe a worker's checkpoint and say whether a restart would load it."""
    import json

    from asvat.domain.timeutil import now_micros, parse_timestamp
    from services.repeat_detector.checkpoint import CheckpointStore, inspect

    directory = args.dir or settings.resolved_checkpoint_dir
    report = inspect(CheckpointStore(directory), _policy(args, settings), args.partitions
                     or settings.topic_partitions)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0 if report["usable"] else 1
    print(f"directory: {report['directory']}")
    if "file" in report:
        age_s = (now_micros() - parse_timestamp(str(report["written_at"]))) / 1_000_000
        offsets = report["offsets"] or {}
        print(f"file: {report['file']} ({report['size']:,} bytes of state, mode {report['mode']})")
        print(f"written at: {report['written_at']} ({age_s / 60:,.1f} minutes ago)")
        print(f"retained incidents: {report['retained_incidents']:,}")
        by_partition = sorted(offsets.items(), key=lambda item: int(item[0]))
        listed = ", ".join(f"{partition}: {offset:,}" for partition, offset in by_partition)
        print(f"offsets: {listed} ({sum(offsets.values()):,} events)")
        print(f"broker epochs: {', '.join(report['epochs'] or []) or 'none'}")
    for leftover in report["leftovers"]:
        print(f"left by a write that never finished (the next write removes it): {leftover}")
    if report["usable"]:
        print("usable: a restarted worker loads it and reads only what came after these offsets")
        print("(unless the broker has lost its topics since, as the embedded broker does when "
              "asvat up restarts: a new broker epoch makes it read the topic from the start)")
        return 0
    print("not usable: a restarted worker reads the topic from the start, because:")
    for reason in report["refused"]:
        print(f"  - {reason}")
    return 1


def _cmd_native(args: argparse.Namespace, settings: Settings) -> int:
    from asvat import native

    return native.main(args.action, required=args.required, verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    from asvat.keys import HmacKeyError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ValueError as exc:
        print(f"asvat: bad setting: {exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args, settings)
    except PolicyError as exc:
        print(f"asvat: bad policy: {exc}", file=sys.stderr)
        return 2
    except HmacKeyError as exc:
        print(f"asvat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
