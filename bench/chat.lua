-- wrk script for the benchmark: POST a small chat request, report a JSON summary.
-- BENCH_BODY (request JSON) and BENCH_API_KEY (Authorization: Bearer) come from the
-- environment; run.py sets both. By hand:
--   wrk -t1 -c16 -d5s --latency -s bench/chat.lua http://127.0.0.1:9001/v1/chat/completions

local body = os.getenv("BENCH_BODY")
if body == nil or body == "" then
  body = '{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful'
    .. ' assistant."},{"role":"user","content":"Write one short sentence about foxes."}],'
    .. '"max_tokens":64}'
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_API_KEY")
if key ~= nil and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

-- One machine-readable line for run.py: counts, latency percentiles in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%.1f,"p90_us":%.1f,'
      .. '"p99_us":%.1f,"max_us":%.1f,"connect":%d,"read":%d,"write":%d,"status":%d,'
      .. '"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
