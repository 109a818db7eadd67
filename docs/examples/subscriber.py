#!/usr/bin/env python3
"""A minimal certfleet event subscriber, in Python with pika.

Usage:
    pip install pika
    CERTFLEET_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \\
        python3 subscriber.py 'cert.*.#.example.com' [MORE_PATTERNS...]

It declares an exclusive, server-named queue (gone when the script stops, so
events published while it is not running are NOT kept for it; a real
subscriber uses a durable queue of its own, as `certfleet watch` does), binds
it to the patterns given (default `cert.#`), and prints the name, kind and
serial of each event, acking each one. See docs/events.md for the schema.

The module is also importable without pika: `parse_event(body)` validates one
event body and returns it as a dict.
"""

import json
import os
import sys

EXCHANGE = "certfleet.events"
SCHEMA = "certfleet.event.v1"
KINDS = ("issued", "renewed", "failed", "revoked")
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


class EventError(ValueError):
    """The body is not a certfleet v1 event."""


def _require(obj, field, kind, where="event"):
    if field not in obj:
        raise EventError(f"{where}: missing field {field!r}")
    value = obj[field]
    # bool is an int in Python; an attempt of `true` is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EventError(f"{where}.{field}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def parse_event(body: bytes) -> dict:
    """Parses and validates one event body (UTF-8 JSON).

    Checks the fields every v1 event has, the `certificate` object of
    issued/renewed events and the `error` object of failed events. Unknown
    fields are kept and ignored (fields are only ever added to v1).
    Raises EventError on anything else.
    """
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise EventError(f"not JSON: {e}") from e
    if not isinstance(event, dict):
        raise EventError("not a JSON object")
    schema = _require(event, "schema", str)
    if schema != SCHEMA:
        raise EventError(f"schema {schema!r}, this subscriber reads {SCHEMA!r}")
    kind = _require(event, "kind", str)
    if kind not in KINDS:
        raise EventError(f"unknown kind {kind!r}")
    if not _require(event, "name", str):
        raise EventError("event.name: empty")
    domains = _require(event, "domains", list)
    if not all(isinstance(d, str) for d in domains):
        raise EventError("event.domains: expected a list of strings")
    _require(event, "job_id", str)
    _require(event, "attempt", int)
    _require(event, "at", str)
    if kind in ("issued", "renewed"):
        cert = _require(event, "certificate", dict)
        for field in ("serial", "not_before", "not_after", "renew_at", "version"):
            _require(cert, field, str, "certificate")
        location = _require(cert, "location", dict, "certificate")
        for field in ("bucket", "bundle_key", "pointer_key"):
            _require(location, field, str, "certificate.location")
    elif kind == "failed":
        error = _require(event, "error", dict)
        for field in ("kind", "detail"):
            _require(error, field, str, "error")
    return event


def describe(event: dict) -> str:
    """One line: name, kind and serial (`-` when the event has none)."""
    serial = (event.get("certificate") or {}).get("serial", "-")
    return f"{event['name']} {event['kind']} serial={serial}"


def main(argv) -> int:
    import pika  # only needed to subscribe, not to parse

    patterns = argv[1:] or ["cert.#"]
    url = os.environ.get("CERTFLEET_AMQP_URL", DEFAULT_URL)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    # Same arguments as certfleet declares it with: durable topic exchange.
    channel.exchange_declare(exchange=EXCHANGE, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    for pattern in patterns:
        channel.queue_bind(queue=queue, exchange=EXCHANGE, routing_key=pattern)
    channel.basic_qos(prefetch_count=16)

    def on_message(ch, method, properties, body):
        try:
            event = parse_event(body)
        except EventError as e:
            # Never crash on a bad message: report it and move on.
            print(f"skipping {method.routing_key}: {e}", file=sys.stderr, flush=True)
        else:
            print(describe(event), flush=True)
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_consume(queue=queue, on_message_callback=on_message)
    print(f"listening on {EXCHANGE} for {' '.join(patterns)}", file=sys.stderr, flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        channel.stop_consuming()
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
