-- wrk script: POST /api/v1/models/bench-model/versions with a JSON body (the URL carries the path).
-- Every request creates a new version, so this measures the version-number allocation under load.
wrk.method = "POST"
wrk.body = '{"source_uri":"s3://b/m.bin"}'
wrk.headers["Content-Type"] = "application/json"
