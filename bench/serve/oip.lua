-- wrk script for bench/serve/run.py: one Open Inference Protocol request,
-- sent over and over on every connection, and a one-line JSON summary.
--
--   wrk -t1 -c32 -d3s --latency -s oip.lua URL -- BODY_FILE [HEADER_LENGTH]
--
-- BODY_FILE: the request body (run.py writes it); POSTed with
-- Content-Type application/json, or, when HEADER_LENGTH is given (the
-- binary tensor extension: a JSON header of that many bytes, then the raw
-- tensor bytes), application/octet-stream and the
-- Inference-Header-Content-Length header. No arguments: a plain GET of URL
-- (the health endpoints).
--
-- The request is built once (no request() or response() function here), so
-- wrk stays on its fast path: one thread can drive 64 connections.

function init(args)
  if args[1] == nil then
    return
  end
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  if args[2] ~= nil then
    wrk.headers["Content-Type"] = "application/octet-stream"
    wrk.headers["Inference-Header-Content-Length"] = args[2]
  else
    wrk.headers["Content-Type"] = "application/json"
  end
end

-- After wrk's own report: "WRK_JSON {...}" with the counts and the latency
-- percentiles in microseconds (run.py parses this line, not the text above).
function done(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 90, 99, 99.9}) do
    p[#p + 1] = string.format('"%s": %d', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, ' ..
    '"latency_us": {"mean": %.1f, "max": %d, "percentiles": {%s}}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, latency.max, table.concat(p, ", ")))
end
