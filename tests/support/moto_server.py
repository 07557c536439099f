"""Starts moto's server on a free loopback port for the Rust test harness.

Prints the port on the first line of stdout, then serves until stdin reaches EOF:
the harness holds our stdin open, so when the test process exits (however it
exits) the pipe closes and the server stops by itself. No orphaned servers.
"""
import sys
import threading

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

import moto_cbor  # beside this file: RPCv2 CBOR (current SDKs' CloudWatch) -> moto's JSON
import moto_firehose  # beside this file: Firehose's defaults in DescribeDeliveryStream
import moto_percentiles  # beside this file: pNN statistics in CloudWatch GetMetricData


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    moto_percentiles.install()
    moto_firehose.install()
    app = moto_cbor.wrap(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(server.server_port, flush=True)
    # Block until the parent closes our stdin (or dies).
    while sys.stdin.buffer.read(4096):
        pass
    server.shutdown()


if __name__ == "__main__":
    main()
