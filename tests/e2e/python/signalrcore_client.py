"""A third-party SignalR client against the hub: Python's signalrcore, which
negotiates without `negotiateVersion` (version 0) and connects with the
`connectionId` as `id`. Driven by tests/e2e/python-client.test.mjs.

Usage: signalrcore_client.py BASE_URL TOKEN REGION

Prints one JSON line per step on stdout: {"negotiated": <the negotiate
answer>}, {"joined": <JoinDispatchGroup's result>}, then {"event": <payload>}
for each JobAssigned, and {"closed": true} once stopped. Runs until stdin
closes, then stops the connection and exits.
"""

import json
import logging
import os
import sys
import threading

from signalrcore.hub.negotiation import NegotiationHandler
from signalrcore.hub_connection_builder import HubConnectionBuilder


def emit(kind, value):
    print(json.dumps({kind: value}), flush=True)


def record_negotiation():
    """Prints the negotiate answer signalrcore acted on, as it received it."""
    original = NegotiationHandler.negotiate

    def negotiate(self):
        url, headers, response = original(self)
        emit("negotiated", {
            "negotiateVersion": response.negotiate_version,
            "connectionId": response.connection_id,
            "id": response.get_id(),
            "url": url,
        })
        return url, headers, response

    NegotiationHandler.negotiate = negotiate


def main():
    base, token, region = sys.argv[1:4]
    record_negotiation()
    hub = (
        HubConnectionBuilder()
        .with_url(f"{base}/hubs/jobs", options={"access_token_factory": lambda: token})
        .configure_logging(logging.WARNING)
        .build()
    )
    opened = threading.Event()
    closed = threading.Event()
    hub.on_open(opened.set)
    hub.on_error(lambda error: emit("error", str(getattr(error, "error", error))))

    def on_close():
        emit("closed", True)
        closed.set()

    hub.on_close(on_close)
    hub.on("JobAssigned", lambda arguments: emit("event", arguments[0]))
    hub.start()
    if not opened.wait(15):
        emit("error", "the connection did not open within 15 s")
        sys.exit(1)
    hub.send("JoinDispatchGroup", [region], on_invocation=lambda completion: emit("joined", completion.result))
    # Until the test closes stdin.
    sys.stdin.read()
    emit("stopping", True)
    hub.stop()
    # signalrcore closes its socket under its blocked reader, which wakes only
    # at the next record: the server's keep-alive Ping, within 15 s.
    if not closed.wait(20):
        emit("error", "the connection did not close within 20 s of stop()")
    # signalrcore leaves non-daemon threads behind after stop(): end here.
    sys.stdout.flush()
    os._exit(0 if closed.is_set() else 1)


if __name__ == "__main__":
    main()
