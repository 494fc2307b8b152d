-- POST /v1/query/answer, the same question every time: cache hits after the first.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
request = function()
  return wrk.format("POST", "/v1/query/answer",
    { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" },
    '{"context": "What does Alice like in the morning?", "max_memories": 10}')
end
done = report
