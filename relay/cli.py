"""``defect-relay``: alerts from the fleet's units to e-mail, chat and push channels, beside the central broker."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="defect-relay", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run the relay"), ("check-config", "validate relay.toml and exit")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", type=Path, default=Path("/etc/defect-edge/relay.toml"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="defect-relay: %(levelname)s %(name)s: %(message)s")
    try:
        from relay import config
        from relay.render import Renderer
    except ImportError as e:  # installed without its extra: say what to install, not a traceback
        print(f"defect-relay: error: {e.name} is missing: the relay needs its extra, pip install "
              f"'defect-inspection[relay]' (make install EXTRAS=relay)", file=sys.stderr)
        return EXIT_BAD_INPUT

    try:
        cfg = config.load(args.config)
        Renderer(cfg).check()
    except config.ConfigError as e:
        print(f"defect-relay: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "check-config":
        print(f"{args.config}: OK: relay {cfg.id}, broker {cfg.mqtt.host}:{cfg.mqtt.port}, SMTP {cfg.smtp.host}:"
              f"{cfg.smtp.port} ({cfg.smtp.security}), {len(cfg.routes)} route(s), templates rendered")
        return 0
    from contract.sqlite import SchemaError
    from relay.service import Relay

    try:
        relay = Relay(cfg)
    except (SchemaError, config.ConfigError) as e:
        print(f"defect-relay: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return relay.run()


if __name__ == "__main__":
    sys.exit(main())
