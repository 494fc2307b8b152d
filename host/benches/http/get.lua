dofile(os.getenv("BENCH_DIR") .. "/common.lua")
path = os.getenv("BENCH_PATH") or "/"
request = function()
  if key then
    return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. key })
  end
  return wrk.format("GET", path)
end
done = report
