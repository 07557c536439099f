"""Smithy RPC v2 CBOR in front of moto, for services moto speaks only as JSON/query.

The current AWS SDKs talk to CloudWatch in Smithy RPC v2 CBOR
(`POST /service/<Target>/operation/<Op>`, `smithy-protocol: rpc-v2-cbor`).
moto 5.2.5 understands CloudWatch's awsJson1.0 and query protocols but has no
CBOR parser, so every call from the Rust SDK would fail. This WSGI middleware
translates on the wire: it decodes the SDK's real CBOR request (gunzipping it
when the SDK compressed it), hands moto the same operation as awsJson1.0, and
encodes moto's answer back to CBOR, with timestamps as CBOR tag 1 as the
protocol requires (found by walking botocore's model of the operation's output).
Errors keep their HTTP status and `__type`. Requests without the CBOR header
pass through untouched, so nothing else moto serves is affected.
"""
import base64
import datetime
import gzip
import io
import json

import cbor2
from botocore.session import get_session

_PREFIX = "/service/"
_models = {}


def _service_model(target_prefix):
    """botocore's model of the service whose JSON target prefix this is."""
    if target_prefix in _models:
        return _models[target_prefix]
    session = get_session()
    found = None
    for name in ("cloudwatch",):
        model = session.get_service_model(name)
        if model.metadata.get("targetPrefix") == target_prefix:
            found = model
    _models[target_prefix] = found
    return found


def _to_json(value):
    """CBOR-decoded request values to what the JSON protocol carries."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, cbor2.CBORTag):
        return _to_json(value.value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    return value


def _to_cbor(value, shape):
    """A JSON-protocol response value to its CBOR form, guided by the output shape."""
    if value is None or shape is None:
        return value
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        members = shape.members
        return {k: _to_cbor(v, members.get(k)) for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_to_cbor(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _to_cbor(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        if isinstance(value, str):
            try:
                seconds = float(value)
            except ValueError:
                seconds = datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        else:
            seconds = float(value)
        return cbor2.CBORTag(1, seconds)
    if kind == "blob" and isinstance(value, str):
        return base64.b64decode(value)
    if kind in ("double", "float") and isinstance(value, int):
        return float(value)
    return value


def wrap(app):
    """Wraps moto's WSGI app with the CBOR translation."""

    def middleware(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if "rpc-v2-cbor" not in environ.get("HTTP_SMITHY_PROTOCOL", "") or not path.startswith(_PREFIX):
            return app(environ, start_response)
        try:
            target, _, op = path[len(_PREFIX):].partition("/operation/")
        except ValueError:
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        if "gzip" in environ.get("HTTP_CONTENT_ENCODING", ""):
            raw = gzip.decompress(raw)
        params = cbor2.loads(raw) if raw else {}
        body = json.dumps(_to_json(params)).encode()

        inner = dict(environ)
        inner["PATH_INFO"] = "/"
        inner["RAW_URI"] = "/"
        inner["REQUEST_URI"] = "/"
        inner["CONTENT_TYPE"] = "application/x-amz-json-1.0"
        inner["CONTENT_LENGTH"] = str(len(body))
        inner["HTTP_X_AMZ_TARGET"] = f"{target}.{op}"
        inner.pop("HTTP_SMITHY_PROTOCOL", None)
        inner.pop("HTTP_CONTENT_ENCODING", None)
        inner["wsgi.input"] = io.BytesIO(body)

        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = headers
            return lambda data: None

        chunks = app(inner, capture)
        try:
            out = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()

        status = captured.get("status", "500 Internal Server Error")
        document = None
        if out:
            try:
                document = json.loads(out)
            except ValueError:
                document = {"__type": "InternalFailure", "message": out.decode(errors="replace")[:500]}
        if document is not None and status.startswith("2"):
            model = _service_model(target)
            shape = model.operation_model(op).output_shape if model is not None else None
            document = _to_cbor(document, shape)
        elif isinstance(document, dict) and "__type" not in document:
            document["__type"] = "InternalFailure"
        payload = cbor2.dumps(document if document is not None else {})
        headers = [
            (k, v)
            for k, v in captured.get("headers", [])
            if k.lower() not in ("content-type", "content-length", "x-amz-crc32")
        ]
        headers += [
            ("Content-Type", "application/cbor"),
            ("smithy-protocol", "rpc-v2-cbor"),
            ("Content-Length", str(len(payload))),
        ]
        start_response(status, headers)
        return [payload]

    return middleware
