"""A tiny Kinesis Data Firehose stand-in for the logship benchmark.

Speaks just enough of the Firehose JSON 1.1 API on loopback: DescribeDeliveryStream
(logship's start-up check) and PutRecordBatch (accepts every record, decodes it and
counts the NDJSON lines inside). GET /stats returns the counts as JSON. Standard
library only; base64 decoding and line counting run in C, so the sink stays far
from being the bottleneck on its own core.

    python3 firehose_sink.py PORT
"""
import binascii
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

stats = {"requests": 0, "records": 0, "lines": 0, "bytes": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm the body would
    # wait for the client's delayed ACK (~40 ms per request on Linux loopback).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/x-amz-json-1.1"):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self.reply(200, dict(stats), "application/json")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        target = self.headers.get("X-Amz-Target", "")
        if target.endswith("DescribeDeliveryStream"):
            name = json.loads(body)["DeliveryStreamName"]
            self.reply(200, {"DeliveryStreamDescription": {
                "DeliveryStreamName": name,
                "DeliveryStreamARN": f"arn:aws:firehose:us-east-1:000000000000:deliverystream/{name}",
                "DeliveryStreamStatus": "ACTIVE",
                "DeliveryStreamType": "DirectPut",
                "VersionId": "1",
                "Destinations": [],
                "HasMoreDestinations": False,
            }})
            return
        if target.endswith("PutRecordBatch"):
            # '"Data":"<base64>"' pieces, without parsing the whole document in Python.
            pieces = body.split(b'"Data":"')[1:]
            lines = size = 0
            for p in pieces:
                raw = binascii.a2b_base64(p[: p.index(b'"')])
                size += len(raw)
                lines += raw.count(b"\n")
            with lock:
                stats["requests"] += 1
                stats["records"] += len(pieces)
                stats["lines"] += lines
                stats["bytes"] += size
            self.reply(200, {
                "FailedPutCount": 0,
                "Encrypted": False,
                "RequestResponses": [{"RecordId": "r"} for _ in pieces],
            })
            return
        self.reply(400, {"__type": "UnknownOperationException", "message": target})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.serve_forever()
