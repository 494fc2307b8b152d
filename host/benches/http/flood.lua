-- Requests with a wrong key from one address (an unauthenticated flood or
-- key guessing), given as `X-Forwarded-For` (the server runs as behind a
-- proxy, so the keyed client beside the flood is another address). done() prints the RESULT line plus how many answers were
-- 401 (the key was looked up) and 429 (refused before any lookup).
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local path = os.getenv("BENCH_PATH") or "/v1/memories"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  unauthorized, limited = 0, 0
end

request = function()
  return wrk.format("GET", path, { ["Authorization"] = "Bearer mem_live_0123456789abcdefghijABCDEFGHIJ01",
    ["X-Forwarded-For"] = "203.0.113.7" })
end

response = function(status, headers, body)
  if status == 401 then unauthorized = unauthorized + 1 elseif status == 429 then limited = limited + 1 end
end

done = function(summary, latency, requests)
  report(summary, latency)
  local u, l = 0, 0
  for _, t in ipairs(threads) do
    u = u + t:get("unauthorized")
    l = l + t:get("limited")
  end
  local secs = summary.duration / 1e6
  io.write(string.format("STATUS 401=%d 429=%d rps_429=%.0f\n", u, l, l / secs))
end
