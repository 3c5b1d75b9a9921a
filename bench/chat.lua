-- wrk script: POST a small chat completion request (the URL carries the path). Used by
-- bench/proxy.sh for both the direct and the through-the-gateway runs, so both send the same bytes.
-- BENCH_MODEL names the model (the gateway routes on it; the nginx stub ignores it).
wrk.method = "POST"
wrk.body = '{"model":"' .. (os.getenv("BENCH_MODEL") or "bench-proxy") ..
    '","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
wrk.headers["Content-Type"] = "application/json"
