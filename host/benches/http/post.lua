dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"text": "Benchmark memory %d: the user likes green tea in the morning.", "metadata": {"n": %d}}', n, n)
  return wrk.format("POST", "/v1/memories",
    { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }, body)
end
done = report
