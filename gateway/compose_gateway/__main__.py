"""compose-gateway: serve the HTTP API, or mint API keys for the key Secret.

    compose-gateway                    # serve (settings from COMPOSE_GATEWAY_* variables)
    compose-gateway new-key --id app   # print a new key, and the line for the key file
    compose-gateway hash-key --id app  # read a key on stdin, print its key-file line
    compose-gateway callback-secret --id app  # the callback secret of one key, for its receiver

Wiring only: settings from the environment, the app from ``app.create_app``, uvicorn to run it.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

import prometheus_client
import pydantic
import uvicorn

from compose_api import tracing
from compose_gateway import app as app_module
from compose_gateway import auth, naming, signing
from compose_gateway import settings as settings_module

SERVICE_NAME = "compose-gateway"  # OpenTelemetry's service.name, unless OTEL_SERVICE_NAME says


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose-gateway", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the HTTP API (the default)")
    for name, text in (("new-key", "mint a new API key"), ("hash-key", "hash a key from stdin")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--id", required=True, help="key id: the owner label of its jobs")
        sub.add_argument("--scheme", choices=("sha256", "scrypt"), default="sha256")
    sub = commands.add_parser("callback-secret", help="print one key's callback secret")
    sub.add_argument("--id", required=True, help="key id")
    sub.add_argument(
        "--secret-file",
        type=pathlib.Path,
        help="the master secret (default: COMPOSE_GATEWAY_CALLBACK_SECRET_FILE)",
    )
    args = parser.parse_args(argv)

    if args.command == "callback-secret":
        if not naming.KEY_ID_PATTERN.match(args.id):
            parser.error("--id: not a key id")
        path = args.secret_file or settings_module.Settings().callback_secret_file
        if path is None:
            parser.error("--secret-file or COMPOSE_GATEWAY_CALLBACK_SECRET_FILE is needed")
        master = app_module.read_secret(path)
        if master is None:
            parser.error(f"--secret-file: cannot read a secret from {path}")
        print(signing.key_secret(master, args.id))
        return 0

    if args.command in ("new-key", "hash-key"):
        if not naming.KEY_ID_PATTERN.match(args.id):
            parser.error("--id: 1-63 letters, digits, '.', '_' or '-', alphanumeric at both ends")
        key = auth.new_key(args.id) if args.command == "new-key" else sys.stdin.readline().strip()
        if not key:
            parser.error("no key on stdin")
        if auth.claimed_id(key) not in (None, args.id):
            parser.error(f"the key names another entry than --id {args.id}")
        if args.scheme == "scrypt" and auth.claimed_id(key) != args.id:
            parser.error(
                f"a scrypt key must start with {auth.KEY_PREFIX}{args.id}{auth.ID_SEPARATOR} "
                "(so that checking it costs one derivation)"
            )
        if not auth.KEY_SHAPE.match(key):
            parser.error("a key is 16 to 512 letters, digits or ._~+/=- characters")
        if args.command == "new-key":
            print(f"key (give it to the client, store it nowhere else): {key}")
        print(f"{args.id}: {auth.hash_key(key, scheme=args.scheme)}")
        return 0

    try:
        settings = settings_module.Settings()
    except pydantic.ValidationError as error:
        print(f"compose-gateway: invalid settings:\n{error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        tracing.configure(SERVICE_NAME)  # off unless OTEL_EXPORTER_OTLP_ENDPOINT is set
        application = app_module.create_app(settings)
    except (ValueError, RuntimeError) as error:  # tracing.SettingsError is a ValueError
        print(f"compose-gateway: {error}", file=sys.stderr)
        return 2
    if settings.metrics_enabled:
        # A port of its own, so /metrics never sits behind the Ingress beside the API.
        prometheus_client.start_http_server(
            settings.metrics_port,
            addr=settings.host,
            registry=application.state.services.metrics.registry,
        )
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
