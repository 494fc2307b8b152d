-- POST /v1/query/answer, a new question every time (thread id and counter in
-- it): every request misses the cache and answers.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"context": "What does Alice like in the morning of day %d, variant %d?", "max_memories": 10}', n, tid or 0)
  return wrk.format("POST", "/v1/query/answer",
    { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }, body)
end
done = report
