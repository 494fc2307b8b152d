dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local questions = {
  "What does Alice like in the morning?", "Who visited the museum in Lisbon?",
  "Who is learning the violin?", "What did Bob buy last summer?",
  "Who repaired the old camera?", "Which trip did Grace plan?",
  "Who cooked a lemon cake before dinner?", "What does Victor do every weekend?",
}
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"context": "%s", "max_memories": 10}', questions[(n % #questions) + 1])
  return wrk.format("POST", "/v1/retrieve",
    { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }, body)
end
done = report
