#!/usr/bin/env python3
"""End-to-end: the official `openai` Python package talking to maas-gateway, unchanged.

Run by e2e/run.sh, which starts the stub upstream (e2e/stub_upstream.py) and the gateway, seeds
the registry and passes everything through the environment:

    E2E_GATEWAY_URL     http://127.0.0.1:<gateway port>
    E2E_API_KEY         a member's maas key (the client's key)
    E2E_ADMIN_KEY       the bootstrap admin's key (only to check that usage is recorded)
    E2E_MODEL           the seeded model: version 1 (alias `production`) and version 2 (`canary`),
                        both served by the stub
    E2E_USAGE_MODEL     another model on the stub, called only by the usage check
    E2E_STUB_URL        http://127.0.0.1:<stub port>, to read what the stub received
    E2E_UPSTREAM_KEY_1  the upstream credential stored on version 1
    E2E_UPSTREAM_KEY_2  the upstream credential stored on version 2

Each check is a function that reads as a specification; the file exits non-zero when any fails
and closes with the line `N passed, M failed`.
"""

import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request

import openai

GATEWAY = os.environ["E2E_GATEWAY_URL"].rstrip("/")
API_KEY = os.environ["E2E_API_KEY"]
ADMIN_KEY = os.environ["E2E_ADMIN_KEY"]
MODEL = os.environ["E2E_MODEL"]
USAGE_MODEL = os.environ["E2E_USAGE_MODEL"]
STUB = os.environ["E2E_STUB_URL"].rstrip("/")
UPSTREAM_KEYS = {"1": os.environ["E2E_UPSTREAM_KEY_1"], "2": os.environ["E2E_UPSTREAM_KEY_2"]}
# Bounds every HTTP call, so that a hung gateway fails the run instead of stalling it.
TIMEOUT_SECONDS = 30
# Usage events are written to Postgres in the background: how long to wait for them.
USAGE_PATIENCE_SECONDS = 15


def client(api_key=API_KEY):
    # No retries: a retried 5xx would hide what the gateway answered the first time.
    return openai.OpenAI(
        base_url=GATEWAY + "/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT_SECONDS
    )


def http(method, url, key=None, body=None, headers=None):
    """(status, headers, body bytes) of one plain HTTP call; never raises on an HTTP status."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", "Bearer " + key)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def stub_requests():
    status, _, body = http("GET", STUB + "/_stub/requests")
    assert status == 200, status
    return json.loads(body)["requests"]


def forget_stub_requests():
    status, _, _ = http("DELETE", STUB + "/_stub/requests")
    assert status == 200, status


def stub_holds():
    status, _, body = http("GET", STUB + "/_stub/holds")
    assert status == 200, status
    return json.loads(body)["holds"]


def release_hold(token):
    status, _, _ = http("POST", STUB + "/_stub/release/" + token, body=b"")
    assert status == 200, status


def held_stream(token):
    """A streamed chat completion that the stub holds after its first chunks (see the stub)."""
    return client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "stub-hold: " + token}], stream=True
    )


def first_content(stream):
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return chunk.choices[0].delta.content
    raise AssertionError("the stream ended before any content")


def chat(model, text, **kwargs):
    """A chat completion through the SDK, with the raw response's headers."""
    raw = client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs
    )
    return raw.parse(), raw.headers


TESTS = []


def test(function):
    TESTS.append(function)
    return function


# -- OpenAI-compatible routes ---------------------------------------------------------------------


@test
def a_chat_completion_returns_the_upstream_answer_and_its_usage():
    completion, headers = chat(MODEL, "hello gateway")
    assert completion.object == "chat.completion", completion
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "echo: hello gateway", completion
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None, "usage was dropped"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3), completion.usage
    assert completion.usage.total_tokens == 5


@test
def responses_name_the_model_and_version_and_the_gateway_overhead():
    _, headers = chat(MODEL, "which version")
    assert headers.get("x-maas-model") == MODEL, dict(headers)
    # A bare name goes to the `production` alias, which points at version 1.
    assert headers.get("x-maas-version") == "1", dict(headers)
    overhead = headers.get("x-maas-overhead-ms")
    assert overhead is not None, dict(headers)
    assert float(overhead) >= 0, overhead


@test
def a_streamed_chat_completion_arrives_in_chunks_that_reassemble_to_the_answer():
    stream = client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "tell me a short story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, chunks, usage = [], 0, None
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == "echo: tell me a short story", pieces
    assert len(pieces) == 6, "one chunk per word was expected, got %r" % pieces
    assert chunks >= 8, chunks
    assert usage is not None, "the final chunk's usage was dropped"
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 6), usage


@test
def a_stream_that_does_not_ask_for_usage_gets_none_and_names_the_clients_model():
    forget_stub_requests()
    stream = client().chat.completions.create(
        model=MODEL + "@canary",
        messages=[{"role": "user", "content": "no usage please"}],
        stream=True,
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    # The gateway asked the model server for usage (to meter the call) and kept the usage-only
    # final chunk from the client, which gets the stream it asked for.
    assert all(chunk.usage is None and chunk.choices for chunk in chunks), chunks
    assert all(chunk.model == MODEL + "@canary" for chunk in chunks), chunks
    seen = [r for r in stub_requests() if r["path"] == "/v1/chat/completions"]
    assert [r["model"] for r in seen] == [MODEL], seen
    assert [r["asks_for_usage"] for r in seen] == [True], seen


@test
def a_stream_reaches_the_client_while_the_upstream_is_still_producing_it():
    token = "unbuffered-%d" % time.monotonic_ns()
    stream = held_stream(token)
    # The stub now holds its stream until released: this chunk came through while it waited.
    # A gateway that buffered the whole body would deliver nothing until the stub gave up
    # holding, and the stub would record that no release came in time.
    pieces = [first_content(stream)]
    release_hold(token)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    state = stub_holds()[token]
    assert state["released_in_time"] is True, state
    assert state["outcome"] == "completed", state
    assert "".join(pieces) == "held" + " tick" * 100, pieces


@test
def a_client_that_leaves_mid_stream_cancels_the_upstream_call():
    token = "cancelled-%d" % time.monotonic_ns()
    stream = held_stream(token)
    first_content(stream)
    stream.close()  # closes the connection to the gateway mid-stream
    release_hold(token)
    # The stub now writes a chunk every few milliseconds until a write fails or it is done.
    deadline = time.monotonic() + 20
    state = stub_holds()[token]
    while state["outcome"] == "streaming":
        if time.monotonic() > deadline:
            raise AssertionError("the held stream neither ended nor failed within 20 s: %r" % state)
        time.sleep(0.1)
        state = stub_holds()[token]
    assert state["released_in_time"] is True, state
    assert state["outcome"] == "disconnected", "the gateway read the upstream to its end: %r" % state


@test
def a_completion_returns_the_upstream_text_and_usage():
    completion = client().completions.create(model=MODEL, prompt="say this please")
    assert completion.choices[0].text == "echo: say this please", completion
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4), completion.usage


@test
def embeddings_return_one_vector_per_input():
    result = client().embeddings.create(model=MODEL, input=["first text", "second"])
    assert [d.index for d in result.data] == [0, 1], result
    for item in result.data:
        assert len(item.embedding) == 4, item
        assert all(isinstance(x, float) for x in item.embedding), item
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 3, result.usage


@test
def embeddings_in_base64_decode_to_the_same_vectors():
    plain = client().embeddings.create(model=MODEL, input="same text", encoding_format="float")
    encoded = client().embeddings.create(model=MODEL, input="same text", encoding_format="base64")
    decoded = encoded.data[0].embedding
    if isinstance(decoded, str):  # SDKs that leave base64 to the caller
        import base64
        import struct

        raw = base64.b64decode(decoded)
        decoded = list(struct.unpack("<%df" % (len(raw) // 4), raw))
    assert [round(x, 4) for x in decoded] == [round(x, 4) for x in plain.data[0].embedding]


@test
def the_model_list_contains_the_seeded_model_in_openais_format():
    models = list(client().models.list())
    ids = [m.id for m in models]
    assert MODEL in ids, ids
    entry = next(m for m in models if m.id == MODEL)
    assert entry.object == "model", entry
    assert isinstance(entry.created, int), entry
    assert entry.owned_by, entry


@test
def name_at_alias_selects_the_aliased_version():
    completion, headers = chat(MODEL + "@canary", "to the canary")
    assert completion.choices[0].message.content == "echo: to the canary"
    assert headers.get("x-maas-version") == "2", dict(headers)
    assert headers.get("x-maas-model") == MODEL, dict(headers)


@test
def name_colon_version_selects_that_version():
    completion, headers = chat(MODEL + ":1", "to version one")
    assert completion.choices[0].message.content == "echo: to version one"
    assert headers.get("x-maas-version") == "1", dict(headers)
    _, headers = chat(MODEL + ":2", "to version two")
    assert headers.get("x-maas-version") == "2", dict(headers)


@test
def the_upstream_gets_the_served_model_name_and_the_client_sees_its_own():
    forget_stub_requests()
    completion, _ = chat(MODEL + "@canary", "model field")
    # The version has no served_model: the model server knows the model by its registry name.
    seen = [r for r in stub_requests() if r["path"] == "/v1/chat/completions"]
    assert [r["model"] for r in seen] == [MODEL], seen
    # The stub answers with the `model` it received; the gateway sets it back to the client's.
    assert completion.model == MODEL + "@canary", completion.model


# -- credentials ----------------------------------------------------------------------------------


@test
def the_client_key_never_reaches_the_upstream_but_the_versions_credential_does():
    forget_stub_requests()
    chat(MODEL, "credential check one")  # production -> version 1
    chat(MODEL + "@canary", "credential check two")  # version 2
    stream = client().chat.completions.create(
        model=MODEL + ":2", messages=[{"role": "user", "content": "streamed"}], stream=True
    )
    for _ in stream:
        pass
    seen = [r for r in stub_requests() if r["path"] == "/v1/chat/completions"]
    assert len(seen) == 3, seen
    authorizations = [r["headers"].get("authorization") for r in seen]
    assert authorizations == [
        "Bearer " + UPSTREAM_KEYS["1"],
        "Bearer " + UPSTREAM_KEYS["2"],
        "Bearer " + UPSTREAM_KEYS["2"],
    ], authorizations
    for request in seen:
        for name, value in request["headers"].items():
            assert API_KEY not in value, "the client's key was forwarded in header %s" % name


@test
def the_raw_invoke_route_forwards_the_body_byte_for_byte_to_the_path_below_the_endpoint():
    body = b'{"prompt":  "raw",\n "n": [1, 2]}'
    status, headers, answer = http(
        "POST",
        "%s/v1/models/%s/invoke/echo/deeper?x=1" % (GATEWAY, MODEL),
        key=API_KEY,
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 200, (status, answer)
    echoed = json.loads(answer)
    assert echoed["method"] == "POST", echoed
    assert echoed["path"] == "/v1/echo/deeper", echoed
    assert echoed["body"] == body.decode(), echoed
    assert echoed["headers"].get("authorization") == "Bearer " + UPSTREAM_KEYS["1"], echoed["headers"]
    assert all(API_KEY not in v for v in echoed["headers"].values()), echoed["headers"]
    assert headers.get("x-maas-model") == MODEL, dict(headers)
    assert headers.get("x-maas-version") == "1", dict(headers)


@test
def the_raw_invoke_route_takes_the_version_from_its_query():
    status, headers, answer = http(
        "POST",
        "%s/v1/models/%s/invoke/echo?version=2" % (GATEWAY, MODEL),
        key=API_KEY,
        body=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert status == 200, (status, answer)
    assert headers.get("x-maas-version") == "2", dict(headers)
    assert json.loads(answer)["headers"].get("authorization") == "Bearer " + UPSTREAM_KEYS["2"]


# -- errors ---------------------------------------------------------------------------------------


@test
def an_unknown_model_raises_not_found_with_an_openai_error_body():
    try:
        chat("no-such-model", "anyone there?")
    except openai.NotFoundError as error:
        assert error.status_code == 404
        assert isinstance(error.body, dict) and error.body.get("message"), error.body
        assert error.body.get("type"), error.body
    else:
        raise AssertionError("an unknown model did not raise NotFoundError")


@test
def an_unknown_version_raises_not_found():
    try:
        chat(MODEL + ":99", "version 99?")
    except openai.NotFoundError as error:
        assert error.status_code == 404
    else:
        raise AssertionError("an unknown version did not raise NotFoundError")


@test
def a_bad_key_raises_authentication_error():
    for key in ("maas_" + "x" * 40, "not-a-maas-key"):
        try:
            client(api_key=key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "let me in"}]
            )
        except openai.AuthenticationError as error:
            assert error.status_code == 401, error
        else:
            raise AssertionError("key %r was accepted" % key)


@test
def an_upstream_error_passes_through_with_its_status_and_body():
    try:
        chat(MODEL, "stub-status: 400")
    except openai.BadRequestError as error:
        assert error.status_code == 400
        assert error.body.get("message") == "stub error 400 as requested", error.body
        assert error.body.get("code") == "stub_error", error.body
    else:
        raise AssertionError("the upstream's 400 did not raise BadRequestError")
    try:
        client().completions.create(model=MODEL, prompt="stub-status: 429")
    except openai.RateLimitError as error:
        assert error.status_code == 429
        assert error.body.get("message") == "stub error 429 as requested", error.body
    else:
        raise AssertionError("the upstream's 429 did not raise RateLimitError")


# -- usage ---------------------------------------------------------------------------------------


def usage_of(model, key):
    """The `group_by=model` usage row of one model as `key` sees it, or None."""
    status, _, body = http(
        "GET", "%s/api/v1/usage?group_by=model&model=%s" % (GATEWAY, model), key=key
    )
    assert status == 200, (status, body)
    report = json.loads(body)
    assert report.get("group_by") == "model", report
    rows = [r for r in report["items"] if r["group"] == model]
    assert len(rows) <= 1, report
    return rows[0] if rows else None


@test
def every_call_is_recorded_as_usage_with_the_upstreams_token_counts():
    # A model of its own (served by the same stub), so that the expected totals are exact.
    model = USAGE_MODEL
    chat(model, "count these tokens")  # 3 prompt, 4 completion ("echo: count these tokens")
    stream = client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "stream tokens"}],  # 2 prompt, 3 completion
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in stream:
        pass
    client().embeddings.create(model=model, input="two words")  # 2 prompt
    try:
        chat(model, "stub-status: 400")  # an error: no tokens
    except openai.BadRequestError:
        pass
    else:
        raise AssertionError("the upstream's 400 did not raise BadRequestError")
    # Events are written to Postgres in the background, in batches.
    deadline = time.monotonic() + USAGE_PATIENCE_SECONDS
    row = usage_of(model, API_KEY)
    while row is None or row["requests"] < 4:
        if time.monotonic() > deadline:
            raise AssertionError(
                "4 calls of %s not recorded within %ds: %r" % (model, USAGE_PATIENCE_SECONDS, row)
            )
        time.sleep(0.25)
        row = usage_of(model, API_KEY)
    assert row["requests"] == 4, row
    assert row["errors"] == 1, row
    assert row["prompt_tokens"] == 3 + 2 + 2, row
    assert row["completion_tokens"] == 4 + 3, row
    assert row["avg_latency_ms"] >= 0, row
    # The admin sees every key's usage: the same calls here.
    assert usage_of(model, ADMIN_KEY)["requests"] == 4


def main():
    passed, failed = 0, 0
    print("openai %s against %s, model %s" % (openai.__version__, GATEWAY, MODEL), flush=True)
    for function in TESTS:
        try:
            function()
        except Exception:  # noqa: BLE001 (a failed check of any kind is reported, not raised)
            failed += 1
            print("FAIL %s" % function.__name__, flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            passed += 1
            print("ok   %s" % function.__name__, flush=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
