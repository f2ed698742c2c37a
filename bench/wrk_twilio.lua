-- wrk script for bench/twilio_ingest.py: Twilio incoming-message webhooks, signed.
--
--   WRK_RESULT=out.json wrk -t1 -c50 -d10s --timeout 30s --latency -s bench/wrk_twilio.lua \
--       http://127.0.0.1:8080/hooks/twilio/bench/messages -- BODIES_FILE [OFFSET]
--
-- wrk cannot compute X-Twilio-Signature (HMAC-SHA1), so the orchestrator precomputes one
-- signed form body per message: BODIES_FILE has one "signature<TAB>body" line each. Each
-- request takes the next line (each a distinct MessageSid), starting after OFFSET lines
-- (what an earlier run, the warm-up, already sent); past the end it starts over,
-- which Twilio would call a retry (stored once). The orchestrator makes enough lines that
-- a run never gets there, and the result says how many requests were sent. done() writes
-- the counts and wrk's latency distribution to $WRK_RESULT as JSON.

local threads = {}
local lines = {}
local n = 0
statuses = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   n = tonumber(args[2] or "0")
   for line in io.lines(args[1]) do
      local tab = string.find(line, "\t", 1, true)
      lines[#lines + 1] = {string.sub(line, 1, tab - 1), string.sub(line, tab + 1)}
   end
end

function request()
   n = n + 1
   local item = lines[((n - 1) % #lines) + 1]
   return wrk.format("POST", nil, {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["X-Twilio-Signature"] = item[1]}, item[2])
end

function response(status, _headers, _body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, _requests)
   local ok, codes = 0, {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         codes[status] = (codes[status] or 0) + count
         if status >= 200 and status < 300 then
            ok = ok + count
         end
      end
   end
   local parts = {}
   for status, count in pairs(codes) do
      parts[#parts + 1] = string.format('"%d":%d', status, count)
   end
   local e = summary.errors
   local out = io.open(os.getenv("WRK_RESULT"), "w")
   out:write(string.format(
      '{"requests":%d,"duration_us":%d,"ok":%d,"statuses":{%s},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"p50_us":%d,"p99_us":%d,"max_us":%d}',
      summary.requests, summary.duration, ok, table.concat(parts, ","),
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
   out:close()
end
