#!/usr/bin/env python3
"""The model server of bench/stream_cpu.sh (stdlib only): one large answer, as fast as it goes.

    python3 bench/stream_stub.py BYTES      # prints the port it bound (127.0.0.1, a free one)

Every POST is answered at once with a body of BYTES bytes, sent with Content-Length in one
write. The request's JSON body (which the gateway forwards untouched) picks it:

    "bench_kind": "sse"       mixed server-sent events, served as text/event-stream
    "bench_kind": "octet"     the same bytes, served as application/octet-stream
    "bench_kind": "newlines"  BYTES bare newlines then the usage event, as text/event-stream

The mixed events are what model servers send, in proportions chosen to exercise every path of
the gateway's meter: OpenAI chunks of a few tokens with "usage": null (stream_options
include_usage), some with \\r\\n endings, comments and event/id lines, runs of blank lines, long
tool-call argument lines (64 KiB, so they span the gateway's reads), and a final chunk with
usage, then [DONE]. The body is built once, deterministically.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench",'
    b'"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4096,"total_tokens":4107}}\n\n'
    b"data: [DONE]\n\n"
)


def chunk(n, crlf=False):
    line = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "delta": {"content": " tok%d" % n}, "finish_reason": None}],
            "usage": None,
        },
        separators=(",", ":"),
    ).encode()
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return b"data: " + line + end


def mixed(size):
    """About `size` bytes of mixed events, ending with the usage chunk."""
    tool = json.dumps({"arguments": "x" * (64 * 1024)}, separators=(",", ":")).encode()
    parts, total, n = [], 0, 0
    while total < size - len(USAGE):
        n += 1
        if n % 2000 == 0:
            piece = b"data: " + tool + b"\n\n"
        elif n % 97 == 0:
            piece = b": keep-alive\n\n"
        elif n % 89 == 0:
            piece = b"event: message\nid: %d\n" % n + chunk(n)
        elif n % 50 == 0:
            piece = b"\n" * 64
        else:
            piece = chunk(n, crlf=n % 7 == 0)
        parts.append(piece)
        total += len(piece)
    body = b"".join(parts)[: size - len(USAGE)]
    # Whatever the cut left of a line ends here, so that the usage event starts a line.
    return body + b"\n\n" + USAGE


def main():
    size = int(sys.argv[1])
    bodies = {
        "sse": (mixed(size), "text/event-stream"),
        "newlines": (b"\n" * size + USAGE, "text/event-stream"),
    }
    bodies["octet"] = (bodies["sse"][0], "application/octet-stream")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            body, content_type = bodies.get(request.get("bench_kind"), bodies["octet"])
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
