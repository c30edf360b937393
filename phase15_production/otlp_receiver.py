"""A minimal OTLP/HTTP trace receiver on loopback: what a collector (Langfuse, Phoenix, an OTel
Collector) sees of our spans, decoded from the protobuf request, with no collector installed.

    with OTLPReceiver() as receiver:                       # http://127.0.0.1:PORT
        tracing = configure_tracing(otlp_endpoint=receiver.url)
        ...
        tracing.close()
        receiver.spans            # [{"name", "trace_id", "span_id", "parent_id", "attributes"}, ...]
        receiver.raw              # the request bodies as received (to search for leaked secrets)

It answers ``POST /v1/traces`` (``application/x-protobuf``) with an empty ``ExportTraceServiceResponse``
and anything else with a 404/415 naming the problem; it exists for tests and for the tracing exercise
to prove spans leave the process over the real wire format.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _value(v) -> Any:
    """An OTLP AnyValue as a Python value."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def decode(body: bytes) -> list[dict[str, Any]]:
    """Spans of one ``ExportTraceServiceRequest``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        service = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    {
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_id": s.parent_span_id.hex() or None,
                        "scope": scope_spans.scope.name,
                        "service": service,
                        "attributes": {kv.key: _value(kv.value) for kv in s.attributes},
                        "events": [
                            {"name": e.name, "attributes": {kv.key: _value(kv.value) for kv in e.attributes}}
                            for e in s.events
                        ],
                        "status_message": s.status.message,
                    }
                )
    return spans


class OTLPReceiver:
    """Loopback OTLP/HTTP receiver; ``url`` is the base endpoint (exporters append ``/v1/traces``)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.spans: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse  # noqa: PLC0415 (opentelemetry loads only on the path that uses it)

                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces":
                    return self._reply(
                        404, f"no route {self.path}; OTLP traces go to /v1/traces".encode(), "text/plain"
                    )
                if "protobuf" not in (self.headers.get("content-type") or ""):
                    return self._reply(415, b"expected application/x-protobuf", "text/plain")
                try:
                    spans = decode(body)
                except Exception as exc:  # a malformed request is the client's problem: say so, keep serving
                    return self._reply(400, f"not an ExportTraceServiceRequest: {exc}".encode(), "text/plain")
                with receiver._lock:
                    receiver.requests += 1
                    receiver.raw.append(body)
                    receiver.spans.extend(spans)
                self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

            def _reply(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> OTLPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
