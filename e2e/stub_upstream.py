#!/usr/bin/env python3
"""A tiny OpenAI-compatible model server for the gateway's end-to-end test (stdlib only).

    python3 e2e/stub_upstream.py [PORT]      # PORT 0 (the default) picks a free one

It listens on 127.0.0.1 only (STUB_HOST=0.0.0.0 in the environment for all interfaces, as in
the container test, docker/test.sh) and prints the port it bound as the first line on stdout,
so a script can start it with port 0 and read the port back. Logs go to stderr.

Routes, all answering at once and deterministically so that a test can predict every byte:

    POST /v1/chat/completions  reply "echo: <last message's content>"; "stream": true answers
                               with server-sent events, one chunk per word, then (when
                               stream_options.include_usage is true) a chunk that carries
                               `usage`, then `data: [DONE]`
    POST /v1/completions       reply "echo: <prompt>" (also streams)
    POST /v1/embeddings        one 4-float vector per input (`encoding_format` float or base64)
    GET  /v1/models            OpenAI's list format with one model, `stub-model`
    *    /v1/echo[/...]        echoes method, path, query, headers and body as JSON
    GET  /_stub/requests       every request received so far: method, path, headers, the body's
                               `model` and whether it asks for a stream's usage (not the bodies)
    DELETE /_stub/requests     forgets them
    POST /_stub/release/TOKEN  lets a held stream go on (see below)
    GET  /_stub/holds          each held stream: released in time or not, and how it ended

Token counts are whitespace-separated words. A message (or prompt) of the form
`stub-status: NNN` makes the route answer status NNN with an OpenAI error body, to check that
upstream errors pass through the gateway unchanged.

A streamed chat completion whose last message is `stub-hold: TOKEN` sends its first two chunks,
then holds until POST /_stub/release/TOKEN (at most HOLD_LIMIT_SECONDS), then sends TICKS more
chunks a little apart and ends. /_stub/holds tells whether the release came while it held (so
the client saw the first chunks before the stream ended: nothing buffered the whole body) and
whether the stream was `completed` or ended because the other side went away (`disconnected`:
the gateway cancelled the upstream call when its client left).
"""

import base64
import json
import os
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Pause between two streamed chunks, so that a stream really arrives in pieces.
STREAM_CHUNK_DELAY_SECONDS = 0.005
# Requests kept for /_stub/requests (oldest dropped first).
MAX_RECORDED = 10_000
EMBEDDING_DIMENSIONS = 4
# A held stream waits this long for its release at most, then goes on anyway.
HOLD_LIMIT_SECONDS = 10
# Chunks a held stream sends after its release, TICK_DELAY_SECONDS apart, so that a peer that
# has gone away is noticed (a write to a closed connection fails by the second one).
TICKS = 100
TICK_DELAY_SECONDS = 0.03
STUB_MODEL = "stub-model"


class Recorder:
    """The requests received, for the test to check what the gateway forwarded."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = []

    def add(self, entry):
        with self._lock:
            self._requests.append(entry)
            del self._requests[:-MAX_RECORDED]

    def all(self):
        with self._lock:
            return list(self._requests)

    def clear(self):
        with self._lock:
            self._requests.clear()


class Holds:
    """Held streams by token: the release event and what happened to each."""

    def __init__(self):
        self._lock = threading.Lock()
        self._events = {}
        self._states = {}

    def event(self, token):
        with self._lock:
            return self._events.setdefault(token, threading.Event())

    def release(self, token):
        self.event(token).set()

    def update(self, token, **state):
        with self._lock:
            self._states.setdefault(token, {}).update(state)

    def all(self):
        with self._lock:
            return {token: dict(state) for token, state in self._states.items()}


def count_tokens(text):
    return len(str(text).split())


def message_text(content):
    """The text of a chat message's content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def asks_for_usage(body):
    """Whether a streamed call asks for its usage (stream_options.include_usage is true)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def requested_status(text):
    """NNN when the text is `stub-status: NNN`, else None."""
    prefix = "stub-status:"
    if isinstance(text, str) and text.startswith(prefix):
        try:
            status = int(text[len(prefix):].strip())
        except ValueError:
            return None
        if 400 <= status <= 599:
            return status
    return None


def embedding_of(text):
    """A small deterministic unit-free vector derived from the text."""
    seed = zlib.crc32(str(text).encode())
    return [round(((seed >> (8 * i)) & 0xFF) / 255.0, 4) for i in range(EMBEDDING_DIMENSIONS)]


class Handler(BaseHTTPRequestHandler):
    """One request; HTTP/1.1 with keep-alive, as a real model server would speak it."""

    protocol_version = "HTTP/1.1"
    server_version = "maas-stub-upstream/1"
    recorder = Recorder()
    holds = Holds()

    # -- plumbing -----------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        sys.stderr.write("stub: %s %s\n" % (self.address_string(), format % args))

    def read_body(self):
        """The request body, with Content-Length or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status, payload, extra_headers=None):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_json(self, status, message, code="stub_error", kind="invalid_request_error"):
        self.send_json(
            status,
            {"error": {"message": message, "type": kind, "param": None, "code": code}},
        )

    def start_events(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_event(self, data):
        text = data if isinstance(data, str) else json.dumps(data)
        payload = ("data: %s\n\n" % text).encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.wfile.flush()

    def end_events(self):
        self.send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def json_body(self, raw):
        """The JSON object in the body, or None after answering 400."""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            self.send_error_json(400, "the body is not valid JSON", code="invalid_json")
            return None
        if not isinstance(body, dict):
            self.send_error_json(400, "the body must be a JSON object", code="invalid_json")
            return None
        return body

    # -- dispatch -----------------------------------------------------------------------------

    def handle_any(self):
        url = urlsplit(self.path)
        raw = self.read_body()
        try:
            sent = json.loads(raw) if raw else None
        except ValueError:
            sent = None
        self.recorder.add(
            {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_bytes": len(raw),
                "model": sent.get("model") if isinstance(sent, dict) else None,
                "asks_for_usage": asks_for_usage(sent) if isinstance(sent, dict) else False,
            }
        )
        path = url.path.rstrip("/") or "/"
        if path == "/_stub/requests":
            if self.command == "DELETE":
                self.recorder.clear()
                return self.send_json(200, {"cleared": True})
            return self.send_json(200, {"requests": self.recorder.all()})
        if path.startswith("/_stub/release/") and self.command == "POST":
            self.holds.release(path[len("/_stub/release/"):])
            return self.send_json(200, {"released": True})
        if path == "/_stub/holds":
            return self.send_json(200, {"holds": self.holds.all()})
        if path == "/v1/echo" or path.startswith("/v1/echo/"):
            return self.echo(url, raw)
        routes = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/embeddings"): self.embeddings,
        }
        if (self.command, path) == ("GET", "/v1/models"):
            return self.send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": STUB_MODEL, "object": "model", "created": 0, "owned_by": "stub"}
                    ],
                },
            )
        route = routes.get((self.command, path))
        if route is None:
            return self.send_error_json(
                404, "no route %s %s on the stub" % (self.command, path), code="unknown_route"
            )
        body = self.json_body(raw)
        if body is not None:
            route(body)
        return None

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any

    # -- routes -------------------------------------------------------------------------------

    def echo(self, url, raw):
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        self.send_json(
            200,
            {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": text,
                "json": parsed,
            },
        )

    def chat_completions(self, body):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.send_error_json(400, "messages must be a non-empty list", code="bad_messages")
        prompt_words = sum(count_tokens(message_text(m.get("content"))) for m in messages if isinstance(m, dict))
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        question = message_text(last.get("content"))
        status = requested_status(question)
        if status is not None:
            return self.send_error_json(status, "stub error %d as requested" % status)
        if body.get("stream") and question.startswith("stub-hold:"):
            return self.held_stream(question[len("stub-hold:"):].strip(), body.get("model", STUB_MODEL))
        answer = "echo: " + question
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": count_tokens(answer),
            "total_tokens": prompt_words + count_tokens(answer),
        }
        model = body.get("model", STUB_MODEL)
        created = int(time.time())
        if body.get("stream"):
            return self.stream(
                answer,
                usage,
                lambda delta, finish: {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                },
                lambda text: {"content": text},
                first_delta={"role": "assistant", "content": ""},
                include_usage=asks_for_usage(body),
            )
        return self.send_json(
            200,
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )

    def completions(self, body):
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        status = requested_status(prompt)
        if status is not None:
            return self.send_error_json(status, "stub error %d as requested" % status)
        answer = "echo: " + str(prompt)
        usage = {
            "prompt_tokens": count_tokens(prompt),
            "completion_tokens": count_tokens(answer),
            "total_tokens": count_tokens(prompt) + count_tokens(answer),
        }
        model = body.get("model", STUB_MODEL)
        created = int(time.time())
        if body.get("stream"):
            return self.stream(
                answer,
                usage,
                lambda delta, finish: {
                    "id": "cmpl-stub",
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}],
                },
                lambda text: text,
                first_delta=None,
                include_usage=asks_for_usage(body),
            )
        return self.send_json(
            200,
            {
                "id": "cmpl-stub",
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": answer, "finish_reason": "stop", "logprobs": None}],
                "usage": usage,
            },
        )

    def embeddings(self, body):
        inputs = body.get("input")
        if isinstance(inputs, (str, int)) or (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
        ):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return self.send_error_json(400, "input must be a string or a non-empty list", code="bad_input")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = embedding_of(item)
            if as_base64:
                encoded = base64.b64encode(struct.pack("<%df" % len(vector), *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": encoded})
            else:
                data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(len(i) if isinstance(i, list) else count_tokens(i) for i in inputs)
        self.send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", STUB_MODEL),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def held_stream(self, token, model):
        """Two chunks, a hold until released, then TICKS chunks; records how it went."""
        release = self.holds.event(token)
        self.holds.update(token, released_in_time=None, outcome="streaming", ticks_sent=0)

        def chunk(delta, finish=None):
            return {
                "id": "chatcmpl-stub-hold",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        self.start_events()
        try:
            self.send_event(chunk({"role": "assistant", "content": ""}))
            self.send_event(chunk({"content": "held"}))
            self.holds.update(token, released_in_time=release.wait(HOLD_LIMIT_SECONDS))
            for i in range(TICKS):
                time.sleep(TICK_DELAY_SECONDS)
                self.send_event(chunk({"content": " tick"}))
                self.holds.update(token, ticks_sent=i + 1)
            self.send_event(chunk({}, "stop"))
            self.end_events()
            self.holds.update(token, outcome="completed")
        except (BrokenPipeError, ConnectionResetError):
            self.holds.update(token, outcome="disconnected")
            self.close_connection = True

    def stream(self, answer, usage, chunk, delta_of, first_delta, include_usage):
        """Server-sent events: one chunk per word, a final chunk with usage when the call asked
        for it (as OpenAI and vLLM do), then [DONE]."""
        self.start_events()
        try:
            if first_delta is not None:
                self.send_event(chunk(first_delta, None))
            words = answer.split(" ")
            for i, word in enumerate(words):
                time.sleep(STREAM_CHUNK_DELAY_SECONDS)
                self.send_event(chunk(delta_of(word if i == 0 else " " + word), None))
            finish = chunk(delta_of("") if first_delta is None else {}, "stop")
            self.send_event(finish)
            if include_usage:
                # As OpenAI does with stream_options.include_usage: no choices, only usage.
                final = chunk(delta_of(""), None)
                final["choices"] = []
                final["usage"] = usage
                self.send_event(final)
            self.end_events()
        except (BrokenPipeError, ConnectionResetError):
            # The client (the gateway) went away mid-stream: nothing left to do.
            self.close_connection = True


def main(argv):
    port = int(argv[1]) if len(argv) > 1 else 0
    host = os.environ.get("STUB_HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    # A larger accept queue than the default 5, for bursts of concurrent test calls.
    server.socket.listen(128)
    print(server.server_address[1], flush=True)
    sys.stderr.write("stub: listening on %s:%d\n" % (host, server.server_address[1]))
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
