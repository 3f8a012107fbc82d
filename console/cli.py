"""``defect-console``: the line console beside the central broker (``docs/console.md``).

``run`` serves the web console and keeps the historian; ``check-config`` validates ``console.toml`` and the database;
``export DIR`` writes the reviewed frames as a training set;
``user add NAME --role ROLE`` and ``user passwd NAME`` manage logins (the password is read from the terminal, or
from ``--password-file`` for scripts).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def _password(a: argparse.Namespace) -> str:
    if a.password_file:
        return str(Path(a.password_file).read_text().strip())
    first = getpass.getpass(f"password for {a.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="defect-console", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("/etc/defect-edge/console.toml"))
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve the console and keep the historian (as systemd runs it)")
    sub.add_parser("check-config", help="validate console.toml and reach the database")
    ex = sub.add_parser("export", help="reviewed frames as a training set: DIR/train and DIR/eval, good/ and defect/")
    ex.add_argument("out", type=Path)
    ex.add_argument("--holdout", type=float, default=0.2, help="the newest share held out in eval/ (default 0.2)")
    u = sub.add_parser("user", help="manage logins").add_subparsers(dest="action", required=True)
    add = u.add_parser("add")
    add.add_argument("name")
    add.add_argument("--role", choices=("viewer", "operator", "engineer", "admin"), required=True)
    add.add_argument("--password-file")
    pw = u.add_parser("passwd")
    pw.add_argument("name")
    pw.add_argument("--password-file")
    ro = sub.add_parser("rollout", help="a release to units in waves (the running console drives it)"
                        ).add_subparsers(dest="rollout_action", required=True)
    start = ro.add_parser("start")
    start.add_argument("--model", required=True)
    start.add_argument("--version", type=int, default=None, help="default: the newest")
    start.add_argument("--units", required=True, help="device ids or patterns, comma-separated: line3-*")
    start.add_argument("--canary", type=int, default=1)
    start.add_argument("--factor", type=float, default=2.0)
    start.add_argument("--manual", action="store_true", help="an engineer promotes each unit (no gates)")
    start.add_argument("--min-compared", type=int, default=50)
    start.add_argument("--min-agreement", type=float, default=0.98)
    start.add_argument("--min-reviewed", type=int, default=0)
    start.add_argument("--max-inference-ms", type=float, default=0.0)
    start.add_argument("--by", default=os.environ.get("SUDO_USER") or os.environ.get("USER") or "cli",
                       help="who starts it, for the audit")
    ro.add_parser("list")
    ab = ro.add_parser("abort")
    ab.add_argument("id")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="defect-console: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its every step at INFO is noise in a journal
    from console import config

    try:
        cfg = config.load(a.config)
    except config.ConfigError as e:
        print(f"defect-console: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from sqlalchemy.exc import SQLAlchemyError

    from console.store import db

    try:
        engine = db.engine_for(cfg.database_url())
        revision = db.migrate(engine)
    except SQLAlchemyError as e:
        print(f"defect-console: error: database: {str(getattr(e, 'orig', e)).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if a.command == "check-config":
        print(f"{a.config}: OK: console {cfg.id}, broker {cfg.mqtt.host}:{cfg.mqtt.port}, database "
              f"{engine.dialect.name} at schema {revision}, web {cfg.web.host}:{cfg.web.port}")
        return 0
    if a.command == "export":
        from console.store import review

        counts = review.export(engine, cfg.images_dir, a.out, holdout=a.holdout)
        print(f"wrote {sum(counts.values())} reviewed frames to {a.out}: train {counts['train_good']} good, "
              f"{counts['train_defect']} defect; eval {counts['eval_good']} good, {counts['eval_defect']} defect "
              f"(fine-tune your model with: defect-convert train {a.out} --init-from NAME.h5; or train one with: "
              f"defect-convert train {a.out / 'train'} --arch ..., then convert ... --eval {a.out / 'eval'})")
        return 0
    if a.command == "user":
        from console import auth

        try:
            if a.action == "add":
                auth.add_user(engine, a.name, _password(a), a.role)
            else:
                auth.set_password(engine, a.name, _password(a))
        except (auth.AuthError, ValueError, OSError) as e:
            print(f"defect-console: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"user {a.name}: {'added' if a.action == 'add' else 'password changed'}")
        return 0
    if a.command == "rollout":
        return _rollout(a, engine)
    from console.service import run

    return run(cfg)


def _rollout(a: argparse.Namespace, engine: Any) -> int:
    import json

    from console.store import queries, rollouts

    if a.rollout_action == "start":
        args = {"model": a.model, "version": a.version, "units": a.units, "canary": a.canary, "factor": a.factor,
                "auto_promote": not a.manual, "min_compared": a.min_compared, "min_agreement": a.min_agreement,
                "min_reviewed": a.min_reviewed, "max_inference_ms": a.max_inference_ms}
        try:
            if a.canary < 1 or a.factor < 1 or not 0 <= a.min_agreement <= 1:
                raise ValueError("--canary and --factor are at least 1, --min-agreement between 0 and 1")
            rollout_id = rollouts.create(engine, **args, user=f"{a.by} (cli)")
        except ValueError as e:
            print(f"defect-console: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        queries.record(engine, f"{a.by} (cli)", "rollout", json.dumps({"id": rollout_id, **args}))
        r = rollouts.get(engine, rollout_id)
        assert r is not None
        print(f"rollout {rollout_id}: {a.model} to {len(r['members'])} units in {r['waves']} waves; the running "
              f"console drives it (/rollouts/{rollout_id})")
        return 0
    if a.rollout_action == "abort":
        if not rollouts.abort(engine, a.id, f"aborted from the command line by {os.environ.get('USER', 'cli')}"):
            print(f"defect-console: error: no running rollout {a.id}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"rollout {a.id}: aborted")
        return 0
    for r in rollouts.listing(engine):
        print(f"{r['id']}  {r['state']:<8} {r['model']} {r['version'] or 'newest'} to {r['units']}, wave "
              f"{r['wave'] + 1}{': ' + r['reason'] if r['reason'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
