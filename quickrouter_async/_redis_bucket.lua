-- The create-rate bucket shared through Redis by every process with the same name
-- (quickrouter_async/_redis.py drives it). One call of this script is one atomic step.
--
-- KEYS[1]: the bucket, a hash; KEYS[2]: the processes that used it lately, a sorted set.
-- ARGV[1]: "take" or "throttle"; ARGV[2]: now in seconds ("" for the server's clock);
-- ARGV[3]: the fixed rate ("" to adapt). Then, for "take": ARGV[4] tokens wanted,
-- ARGV[5] the latest ratelimit-remaining seen ("" if none), ARGV[6] the count of tokens
-- ever granted as the process knew it when that answer came, ARGV[7] answers since its
-- last take, ARGV[8] the process's id ("" to skip registering it). For "throttle": ARGV[4] 429s that
-- said the server's bucket was empty, ARGV[5] other 429s, ARGV[6] the longest wait they
-- asked for ("" if none did), ARGV[7] the longest pause allowed.
--
-- Numbers go back as strings: Redis would cut them to integers.

local INITIAL_RATE, INITIAL_BURST, MIN_RATE = 10.0, 10.0, 0.1
-- Growth per token granted while the pace is what callers wait for, without headers.
local SLOW_START_STEP, PROBE_STEP, PROBE_RAMP = 2.0, 0.03, 10.0
local BACK_OFF, BURST_SECONDS, FIXED_BURST_SECONDS = 0.9, 0.1, 0.005
local EVENT_GAP, DEFAULT_PAUSE = 0.25, 1.0
local EPISODE_QUIET, EPISODE_FLOOR = 30.0, 0.25
-- The accepted rate is measured over two to four seconds when no 429 bounds it.
local WINDOW = 2.0
-- ratelimit-remaining: counts seen this recently steer the rate instead of probing.
-- They keep the server's bucket near a RESERVE share of the most it was seen to hold
-- (its burst, about), which absorbs the jitter of many processes. While a count is above
-- the reserve by more than one, the rate rises by UP per second for each create more (at
-- most EXCESS_MAX of them); while one is below it, it falls by DOWN per second for each
-- create less. In slow start (until the counts below the reserve have taken it to
-- SLOW_END of the highest rate it reached) it rises by SLOW_UP instead, so that a new
-- job finds the limit within seconds (a job's first burst, which empties the server's
-- bucket at once, does not end it: it takes no time to step down); after that the
-- steps are small, because the counts of many processes come late, and a large step
-- would swing the rate around the limit. Not upwards in the SETTLE seconds after a
-- pause: then the bucket is full because of the pause, not because of the pace.
-- Steering needs a bucket seen holding STEER creates or more: a smaller one's count says
-- nothing of the pace, and 429s steer alone. What the server holds beyond the reserve
-- and MARGIN (a create on its way) also goes at once, at most HEADER_MAX.
local HEADER_FRESH, HEADER_MAX, MARGIN = 10.0, 1000.0, 1.0
local RESERVE, STEER, EXCESS_MAX, SETTLE = 0.5, 4.0, 5.0, 2.0
local SLOW_UP, SLOW_END, UP, DOWN = 0.1, 0.9, 0.02, 0.05
local MEMBER_SECONDS, TTL_MS = 30.0, 3600000
local NEVER = -1e18

local key, members = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
if now == nil then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
end
local fixed = tonumber(ARGV[3])

local names = {
  'rate', 'cap', 'tokens', 'stamp', 'resume', 'slow', 'event', 'gev', 'tev', 'pev',
  'best', 'granted', 'throttled', 'answers', 'header_at', 'top', 'level_at', 'peak', 'w0', 'wg0', 'wt0', 'w1',
  'wg1', 'wt1', 'processes',
}
local values = redis.call('HMGET', key, unpack(names))
local s = {}
for i, name in ipairs(names) do
  s[name] = tonumber(values[i])
end
if s.rate == nil then
  -- A new bucket (or one idle past its expiry): Replicate's documented limit, full.
  s.rate = fixed or INITIAL_RATE
  s.cap = fixed and math.max(1.0, fixed * FIXED_BURST_SECONDS) or INITIAL_BURST
  s.tokens, s.slow = s.cap, fixed and 0 or 1
end
-- Fields a bucket lacks start afresh (the event's stay absent until a 429).
local defaults = {
  stamp = now, resume = NEVER, slow = 0, best = 0, granted = 0, throttled = 0, answers = 0,
  header_at = NEVER, top = 0, level_at = now, peak = s.rate, w0 = now, wg0 = 0, wt0 = 0,
  w1 = now, wg1 = 0, wt1 = 0, processes = 1, cap = INITIAL_BURST, tokens = 0,
}
for name, value in pairs(defaults) do
  if s[name] == nil then
    s[name] = value
  end
end

if now > s.stamp then
  if s.tokens < s.cap then -- an allowance above the capacity is kept, not cut
    s.tokens = math.min(s.cap, s.tokens + (now - s.stamp) * s.rate)
  end
  s.stamp = now
end
if fixed and s.rate ~= fixed then
  s.rate, s.cap, s.slow = fixed, math.max(1.0, fixed * FIXED_BURST_SECONDS), 0
end
if now - s.w1 >= 2 * WINDOW then
  -- Idle: what was granted before says nothing about the rate now.
  s.w0, s.wg0, s.wt0 = now, s.granted, s.throttled
  s.w1, s.wg1, s.wt1 = now, s.granted, s.throttled
elseif now - s.w1 >= WINDOW then
  s.w0, s.wg0, s.wt0 = s.w1, s.wg1, s.wt1
  s.w1, s.wg1, s.wt1 = now, s.granted, s.throttled
end

local function floor_rate()
  return math.max(MIN_RATE, EPISODE_FLOOR * s.best)
end

-- The rate the server accepted lately: since the last 429, else over the window.
-- Tokens reserved ahead (a negative bucket) were granted but not sent yet.
local function measured()
  local sent = s.granted - math.max(0, -s.tokens)
  if s.event ~= nil then
    local sending = now - s.event - s.pev
    if sending >= 1 and sending <= 10 * WINDOW then
      return math.max(MIN_RATE, (sent - s.gev - (s.throttled - s.tev)) / sending)
    end
  end
  local span = now - s.w0
  if span < 1 then
    return nil
  end
  return math.max(MIN_RATE, (sent - s.wg0 - (s.throttled - s.wt0)) / span)
end

local function save()
  local fields = {}
  for _, name in ipairs(names) do
    if s[name] ~= nil then
      fields[#fields + 1] = name
      fields[#fields + 1] = string.format('%.17g', s[name])
    end
  end
  redis.call('HSET', key, unpack(fields))
end

local function text(x)
  return string.format('%.17g', x)
end

if op == 'take' then
  local want, remaining, known = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local member = ARGV[8]
  s.answers = s.answers + tonumber(ARGV[7])
  if member ~= '' then
    redis.call('ZADD', members, now, member)
    redis.call('ZREMRANGEBYSCORE', members, '-inf', now - MEMBER_SECONDS)
    s.processes = redis.call('ZCARD', members)
    redis.call('PEXPIRE', members, TTL_MS)
    redis.call('PEXPIRE', key, TTL_MS)
  end
  if remaining ~= nil and not fixed and known <= s.granted then
    -- The server's own count: what it holds, less every token granted since the process
    -- last heard from the bucket (some of them may not have reached the server), may go
    -- at once; and the pace is steered so that the server's bucket neither fills
    -- (creates not sent) nor runs dry (429s). A count older than the bucket is ignored.
    remaining = math.min(remaining, HEADER_MAX)
    s.header_at = now
    s.top = math.max(s.top, remaining)
    local reserve = math.floor(RESERVE * s.top)
    local allowance = remaining - reserve - MARGIN - (s.granted - known)
    if allowance > s.tokens then
      s.tokens = allowance
    end
    if s.top >= STEER then
      local step = math.min(1.0, math.max(0, now - s.level_at))
      s.level_at = now
      if remaining > reserve + 1 and now >= s.resume + SETTLE then
        local up = s.slow == 1 and SLOW_UP or UP
        s.rate = s.rate * (1 + up * math.min(EXCESS_MAX, remaining - reserve - 1) * step)
        s.peak = math.max(s.peak, s.rate)
      elseif remaining < reserve then
        s.rate = math.max(floor_rate(), s.rate * (1 - DOWN * (reserve - remaining) * step))
        if s.rate < SLOW_END * s.peak then
          s.slow = 0
        end
      end
    end
  end
  local granted, before, rate = 0, s.tokens, s.rate
  if now >= s.resume and want > 0 then
    -- What the bucket holds, or one token reserved ahead: a caller never asks twice.
    granted = math.min(want, math.max(1, math.floor(before)))
    s.tokens = before - granted
    s.granted = s.granted + granted
    if not fixed and before < 1 and s.answers > 0 and now - s.header_at > HEADER_FRESH then
      -- The pace is what callers wait for, answers come back and no header says more:
      -- probe upwards, the longer no 429 came the faster (a raised limit is found again).
      if s.slow == 1 or s.event == nil then
        s.rate = s.rate + SLOW_START_STEP * granted
      else
        local quiet = (now - s.event) / PROBE_RAMP
        s.rate = s.rate + PROBE_STEP * (1 + quiet * quiet) * granted
      end
    end
  end
  save()
  return {
    granted, text(before), text(rate), text(math.max(0, s.resume - now)), s.processes,
    s.granted,
  }
end

-- A batch of 429s.
local empty, other = tonumber(ARGV[4]), tonumber(ARGV[5])
local asked, max_pause = tonumber(ARGV[6]), tonumber(ARGV[7])
s.throttled = s.throttled + empty + other
if empty > 0 then
  local pause = math.min(asked or DEFAULT_PAUSE, max_pause)
  s.resume = math.max(s.resume, now + pause)
  s.tokens = math.min(s.tokens, 0)
  local last = s.event
  -- Throttles close together are one event: the creates already sent when the first
  -- 429 came say nothing new about the limit.
  if not fixed and (last == nil or now - last - s.pev >= math.max(EVENT_GAP, 2 / s.rate)) then
    if last == nil or now - last > EPISODE_QUIET then
      s.best = 0
    end
    local accepted = measured()
    if accepted ~= nil then
      s.best = math.max(s.best, accepted)
    end
    if accepted == nil then
      s.rate = math.max(floor_rate(), s.rate / 2)
    else
      s.slow = 0
      s.rate = math.max(floor_rate(), BACK_OFF * math.min(s.rate, accepted))
    end
    s.cap = math.max(1.0, s.rate * BURST_SECONDS)
    s.event, s.gev, s.tev, s.pev = now, s.granted, s.throttled, pause
  end
end
save()
return {text(s.rate), text(math.max(0, s.resume - now))}
