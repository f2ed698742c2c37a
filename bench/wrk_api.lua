-- wrk script for bench/api_ingest.py: API-channel messages with a bearer token.
--
--   WRK_RESULT=out.json wrk -t1 -c50 -d20s --timeout 30s --latency -s bench/wrk_api.lua \
--       http://127.0.0.1:8080/hooks/api/default/messages -- PREFIX TOKEN CUSTOMERS SEED BASE
--
-- Each request has a unique message_id (PREFIX-<thread>-<n>), a ~300-byte text and a
-- sender drawn from CUSTOMERS customers (cust-BASE...), so customers repeat. Each 2xx
-- answer carries the stored message, whose provider message_id is recorded: the
-- orchestrator checks that every acknowledged message is in the database. done() writes
-- the counts, the latency distribution and the acknowledged ids to $WRK_RESULT as JSON.

local threads = {}
local counter = 1

function setup(thread)
   thread:set("id", counter)
   table.insert(threads, thread)
   counter = counter + 1
end

local WORDS = {"order", "delivery", "refund", "package", "tracking", "invoice", "address",
   "the", "my", "is", "not", "arrived", "yet", "please", "help", "with", "account",
   "payment", "will", "it", "ship", "thanks", "hello", "again", "still", "waiting", "for",
   "an", "answer", "number", "week", "ago", "color", "wrong", "item", "received", "box"}

local prefix, headers, customers, base
local texts = {}
local n = 0
acked = {}
statuses = {}

function init(args)
   prefix = args[1] .. "-" .. id
   headers = {["Authorization"] = "Bearer " .. args[2],
              ["Content-Type"] = "application/json"}
   customers = tonumber(args[3])
   base = tonumber(args[5] or "10000000")
   math.randomseed(tonumber(args[4]) * 1000 + id)
   for i = 1, 512 do
      local words, length = {}, 0
      local target = math.random(260, 340)
      while length < target do
         local word = WORDS[math.random(#WORDS)]
         table.insert(words, word)
         length = length + #word + 1
      end
      texts[i] = table.concat(words, " ") .. "? Order #" .. math.random(1000000, 9999999) .. "."
   end
end

function request()
   n = n + 1
   local cust = base + math.random(0, customers - 1)
   local body = string.format(
      '{"message_id":"%s-%09d","from":{"id":"cust-%d","name":"Customer %d",'
      .. '"email":"cust-%d@example.com"},"text":"%s"}',
      prefix, n, cust, cust, cust, texts[(n % #texts) + 1])
   return wrk.format("POST", nil, headers, body)
end

function response(status, _headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 200 and status < 300 then
      local message_id = string.match(body, '"provider":{"message_id":"([^"]+)"')
      if message_id then
         acked[#acked + 1] = message_id
      end
   end
end

function done(summary, latency, _requests)
   local ok, ids, codes = 0, {}, {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         codes[status] = (codes[status] or 0) + count
         if status >= 200 and status < 300 then
            ok = ok + count
         end
      end
      for _, message_id in ipairs(thread:get("acked")) do
         ids[#ids + 1] = '"' .. message_id .. '"'
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
      .. '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"acked_ids":[%s]}',
      summary.requests, summary.duration, ok, table.concat(parts, ","),
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
      table.concat(ids, ",")))
   out:close()
end
