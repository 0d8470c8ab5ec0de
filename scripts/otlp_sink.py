#!/usr/bin/env python
"""A minimal OTLP/HTTP trace receiver: takes what exporters POST to /v1/traces, counts the spans
by service and name, and keeps the counts in a JSON file (rewritten after every request).

    python scripts/otlp_sink.py --port 4318 --out spans.json &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 kafka-pipeline run --until-drained

Stands in for a collector on this machine: `scripts/bench_enrich.py --otlp-sink` measures the
worker with its spans really exported, and tests/observability/test_tracing.py checks that a `run` exports.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse


def serve(port: int, out: Path) -> None:
    counts: Counter[str] = Counter()  # "<service> <span name>" -> spans

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), "?")
                for scope in resource.scope_spans:
                    counts.update(f"{service} {span.name}" for span in scope.spans)
            partial = out.with_name(out.name + ".partial")
            partial.write_text(json.dumps(dict(counts), indent=1, sort_keys=True))
            partial.replace(out)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"otlp sink on http://127.0.0.1:{server.server_address[1]}, counts in {out}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="otlp_sink.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=4318, help="port on 127.0.0.1 (default: 4318, OTLP/HTTP's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the span counts")
    args = parser.parse_args()
    serve(args.port, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
