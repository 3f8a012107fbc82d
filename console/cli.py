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
import sys
from collections.abc import Sequence
from pathlib import Path

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
              f"(train with: defect-convert train {a.out / 'train'} --arch ...; then convert ... --eval "
              f"{a.out / 'eval'})")
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
    from console.service import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
