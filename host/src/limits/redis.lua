-- All of a request's rate-limit rules in one atomic step (see algorithm.rs
-- for the same arithmetic in Rust and its table tests). The clock is Redis's
-- own TIME, so every instance counts on one clock.
--
-- KEYS: one counter per rule.
-- ARGV[1]: the request's lease id (concurrency rules); then five per rule:
--   algorithm (1 fixed-window, 2 sliding-window, 3 token-bucket,
--   4 concurrency), limit, window in µs, burst (0 = limit), cost.
-- Returns one {allowed, limit, remaining, reset_us, retry_after_us} per rule.
-- Nothing is taken unless every rule allows the request; an empty lease id
-- only reads.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = ARGV[1]
local function int(x) return string.format('%.0f', x) end

local out, plan, all = {}, {}, true
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local alg, limit = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local window, burst, cost = math.max(tonumber(ARGV[b + 3]), 1), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local key = KEYS[i]
  local ok, shown, remaining, reset, retry
  if alg == 1 or alg == 2 then
    local idx = math.floor(now / window)
    local h = redis.call('HMGET', key, 'i', 'c', 'p')
    local si, sc, sp = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
    local cur, prev = 0, 0
    if si == idx then
      cur = sc
      if alg == 2 then prev = sp end
    elseif alg == 2 and si == idx - 1 then
      prev = sc
    end
    local elapsed = now - idx * window
    local window_end = (idx + 1) * window - now
    local used = cur
    if prev > 0 then used = cur + math.ceil(prev * (window - elapsed) / window) end
    shown, reset = limit, window_end
    if used + cost <= limit then
      ok, remaining, retry = 1, limit - used - cost, 0
    else
      ok, remaining = 0, math.max(limit - used, 0)
      if cur + cost > limit or prev == 0 then
        retry = window_end
      else
        local needed = window - math.floor((limit - cur - cost) * window / prev)
        retry = math.min(math.max(needed - elapsed, 1), window_end)
      end
    end
    plan[i] = { alg, key, idx, cur + cost, prev, (idx + 2) * window - now }
  elseif alg == 3 then
    local interval = math.max(math.floor(window / math.max(limit, 1)), 1)
    if burst == 0 then burst = math.max(limit, 1) end
    local tau = burst * interval
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + cost * interval
    shown = burst
    if new_tat - now > tau then
      ok, remaining = 0, math.floor(math.max(tau - (tat - now), 0) / interval)
      reset, retry = tat - now, new_tat - now - tau
    else
      ok, remaining = 1, math.floor((tau - (new_tat - now)) / interval)
      reset, retry = new_tat - now, 0
    end
    plan[i] = { alg, key, new_tat, new_tat - now }
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
    local used = redis.call('ZCARD', key)
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local first_expiry = 0
    if first[2] then first_expiry = tonumber(first[2]) - now end
    local c = math.min(cost, 1)
    shown, reset = limit, first_expiry
    if used + c <= limit then
      ok, remaining, retry = 1, limit - used - c, 0
    else
      ok, remaining, retry = 0, math.max(limit - used, 0), first_expiry
    end
    plan[i] = { alg, key, now + window, window }
  end
  if ok == 0 then all = false end
  out[i] = { ok, shown, remaining, reset, retry }
end

if all and lease ~= '' then
  for i = 1, #KEYS do
    local p = plan[i]
    if p[1] == 1 or p[1] == 2 then
      redis.call('HSET', p[2], 'i', int(p[3]), 'c', int(p[4]), 'p', int(p[5]))
      redis.call('PEXPIRE', p[2], int(math.ceil(p[6] / 1000) + 1))
    elseif p[1] == 3 then
      redis.call('SET', p[2], int(p[3]), 'PX', int(math.ceil(p[4] / 1000) + 1))
    else
      redis.call('ZADD', p[2], int(p[3]), lease)
      redis.call('PEXPIRE', p[2], int(math.ceil(p[4] / 1000) + 1))
    end
  end
end
return out
