-- wrk script for token-load: every request is `POST {}` with a JSON content type and the
-- API key from the BENCH_API_KEY environment variable, on the daemon and on bare-handler
-- alike. No response() callback: it would make wrk itself the bottleneck.
--
--   BENCH_API_KEY=pbk_... wrk -t1 -c64 -d10s --latency -s bench/token.lua \
--       http://127.0.0.1:PORT/v1/tenants/1/token
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_API_KEY")
if key == nil or key == "" then
  error("set BENCH_API_KEY to a token API key (provet-broker api-key create --role token)")
end
wrk.headers["Authorization"] = "Bearer " .. key
