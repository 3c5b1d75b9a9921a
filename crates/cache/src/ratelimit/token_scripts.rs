//! The token limiter's Lua scripts: one call's request and token reservation decided atomically,
//! and reservations settled. See [`super::tokens`] for the design and its bounds.
//!
//! Every loop is bounded: over a window's fields (at most 62, since every script that writes a
//! window first drops its seconds older than 60 s, and it only ever writes the current second
//! or one still in the window), over a call's two subjects, over a batch's settlements (at most
//! [`super::tokens::SETTLE_BATCH`]). Numbers are Lua doubles, exact below 2^53: tokens are
//! bounded far below (quotas at 10^12, reservations by the body size and
//! `usage.max_tokens_per_call`); they are written with `%.0f` so that Redis never sees an
//! exponent.

/// One call: its request against the key's GCRA (and the user's), its reservation against the
/// key's and the user's token windows and month counters; admitted only if all admit, and a
/// refusal writes nothing but dropping a window's expired seconds.
///
/// KEYS: the key's TAT, the user's TAT, the key's window, the user's window (always four; the
/// ARGV say which are used). ARGV: 1 expiry margin (ms); 2, 3 the key's emission interval and
/// capacity (µs); 4, 5 the user's (interval 0: no user limit); 6 tokens to reserve; 7, 8 the
/// key's and the user's tpm (0: none); 9, 10 their month quotas (0: none); 11, 12 the prefixes
/// of their month counters' names (the month, `yyyymm`, is appended); 13 a month counter's idle
/// lifetime (ms).
///
/// Replies (integers):
/// - `{1, second, yyyymm, remaining, reset_us, whose, tpm, tokens_left, tokens_reset_us,
///   tokens_whose}`: admitted (`tpm` 0 when neither has one; `whose` 1 = key, 2 = user);
/// - `{2, wait_us, reset_us, whose}`: refused by a request rate;
/// - `{3, wait_us, tpm, used, whose, remaining, reset_us, rate_whose}`: refused by a token
///   window (with the request rate's figures, unspent);
/// - `{4, yyyymm, quota, used, whose, remaining, reset_us, rate_whose}`: refused by a month's
///   quota;
/// - `{5, yyyymm, key_missing, user_missing}`: a month counter is missing, nothing decided.
pub(super) const RESERVE_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local margin_ms = tonumber(ARGV[1])
local tokens = tonumber(ARGV[6])
local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now = now_s * 1000000 + tonumber(time[2])
local function str(n) return string.format('%.0f', n) end

-- The calendar month (UTC) of Unix second s as yyyymm: days to a civil date (H. Hinnant).
local function month_of(s)
  local z = math.floor(s / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y * 100 + m
end
local month = month_of(now_s)

-- Month counters: a missing one is not zero; the caller seeds it from the durable record.
local months, missing = {}, {0, 0}
for i = 1, 2 do
  local quota = tonumber(ARGV[8 + i])
  if quota > 0 then
    local name = ARGV[10 + i] .. str(month)
    local used = redis.call('GET', name)
    if not used then
      missing[i] = 1
    else
      months[#months + 1] = {i = i, name = name, quota = quota, used = tonumber(used) or 0}
    end
  end
end
if missing[1] + missing[2] > 0 then
  return {5, month, missing[1], missing[2]}
end

-- Request rates: the GCRA of the key, and of the user when it has a limit.
local function gcra(key, interval, capacity)
  local tat = now
  local stored = redis.call('GET', key)
  if stored then
    tat = math.max(tonumber(stored) or now, now)
  end
  return {key = key, interval = interval, capacity = capacity, tat = tat,
          fit = math.floor((now + capacity - tat) / interval)}
end
local rates = {gcra(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))}
if tonumber(ARGV[4]) > 0 then
  rates[2] = gcra(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]))
end
-- The request rate as it is, unspent: what a refusal by another limit reports.
local req_left, req_reset, req_whose = nil, 0, 1
for i, a in ipairs(rates) do
  local left = math.max(a.fit, 0)
  if req_left == nil or left < req_left or (left == req_left and a.tat - now > req_reset) then
    req_left, req_reset, req_whose = left, a.tat - now, i
  end
end
for _, c in ipairs(months) do
  if c.used >= c.quota then
    return {4, month, c.quota, c.used, c.i, req_left, req_reset, req_whose}
  end
end
local refusal, longest = nil, -1
for i, a in ipairs(rates) do
  if a.fit < 1 then
    local wait = a.tat + a.interval - a.capacity - now
    if wait > longest then
      refusal, longest = {2, wait, a.tat - now, i}, wait
    end
  end
end

-- Token windows: tokens per second (field = Unix second); a second counts while it is at
-- least now - 60, older ones are dropped here.
local windows = {}
for i = 1, 2 do
  local tpm = tonumber(ARGV[6 + i])
  if tpm > 0 then
    local key = KEYS[2 + i]
    local raw = redis.call('HGETALL', key)
    local sum, entries = 0, {}
    for j = 1, #raw, 2 do
      local s = tonumber(raw[j])
      if s == nil or s < now_s - 60 then
        redis.call('HDEL', key, raw[j])
      else
        local t = tonumber(raw[j + 1]) or 0
        sum = sum + t
        entries[#entries + 1] = {s, t}
      end
    end
    windows[#windows + 1] = {i = i, key = key, tpm = tpm, sum = sum}
    if sum >= tpm then
      -- Below the limit once enough of the oldest seconds have left (second s leaves at s + 61).
      table.sort(entries, function(a, b) return a[1] < b[1] end)
      local left, wait = sum, 0
      for _, e in ipairs(entries) do
        left = left - e[2]
        if left < tpm then
          wait = (e[1] + 61) * 1000000 - now
          break
        end
      end
      if wait > longest then
        refusal, longest = {3, wait, tpm, sum, i, req_left, req_reset, req_whose}, wait
      end
    end
  end
end
if refusal then
  return refusal
end

-- Admitted: spend one request of each rate, reserve the tokens in each window and month.
local tightest, least, reset = 1, nil, 0
for i, a in ipairs(rates) do
  local new_tat = a.tat + a.interval
  redis.call('SET', a.key, str(new_tat), 'PX', str(math.ceil((new_tat - now) / 1000) + margin_ms))
  local left = math.floor((a.capacity - (new_tat - now)) / a.interval)
  if least == nil or left < least or (left == least and new_tat - now > reset) then
    tightest, least, reset = i, left, new_tat - now
  end
end
local tpm, tokens_left, tokens_whose = 0, 0, 0
for _, w in ipairs(windows) do
  redis.call('HINCRBY', w.key, str(now_s), str(tokens))
  redis.call('PEXPIRE', w.key, str(61000 + margin_ms))
  local left = math.max(w.tpm - (w.sum + tokens), 0)
  if tokens_whose == 0 or left < tokens_left then
    tpm, tokens_left, tokens_whose = w.tpm, left, w.i
  end
end
for _, c in ipairs(months) do
  redis.call('INCRBY', c.name, str(tokens))
  redis.call('PEXPIRE', c.name, ARGV[13])
end
return {1, now_s, month, least, reset, tightest, tpm, tokens_left,
        (now_s + 61) * 1000000 - now, tokens_whose}
";

/// Settles reservations. KEYS, four per settlement: the key's window, the user's window, the
/// key's month counter, the user's month counter. ARGV: 1 expiry margin (ms); then three per
/// settlement: the reservation's second, the delta (charge minus reservation, may be negative),
/// the counters it is in (bits: 1 key window, 2 user window, 4 key month, 8 user month).
///
/// A window's second still in the window is adjusted (never below 0); a second that has left
/// it (or was lost) takes nothing back, and an overrun is charged to the current second. A
/// month counter that exists is adjusted (never below 0); a missing one will be seeded from the
/// durable record, which holds the call's charge. Returns how many settlements were applied.
pub(super) const SETTLE_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local margin_ms = tonumber(ARGV[1])
local time = redis.call('TIME')
local now_s = tonumber(time[1])
local function str(n) return string.format('%.0f', n) end
local function has(bits, bit) return math.floor(bits / bit) % 2 == 1 end
local function drop_expired(key)
  local fields = redis.call('HKEYS', key)
  for _, f in ipairs(fields) do
    local s = tonumber(f)
    if s == nil or s < now_s - 60 then
      redis.call('HDEL', key, f)
    end
  end
end
local window_bits, month_bits = {1, 2}, {4, 8}
local settled = 0
for n = 0, #KEYS / 4 - 1 do
  local second = tonumber(ARGV[2 + n * 3])
  local delta = tonumber(ARGV[3 + n * 3])
  local bits = tonumber(ARGV[4 + n * 3])
  for i = 1, 2 do
    if has(bits, window_bits[i]) then
      local key = KEYS[n * 4 + i]
      drop_expired(key)
      local current = nil
      if second >= now_s - 60 then
        current = redis.call('HGET', key, str(second))
      end
      if current then
        local v = redis.call('HINCRBY', key, str(second), str(delta))
        if v < 0 then
          redis.call('HSET', key, str(second), '0')
        end
      elseif delta > 0 then
        redis.call('HINCRBY', key, str(now_s), str(delta))
        redis.call('PEXPIRE', key, str(61000 + margin_ms))
      end
    end
  end
  for i = 1, 2 do
    if has(bits, month_bits[i]) then
      local key = KEYS[n * 4 + 2 + i]
      if redis.call('EXISTS', key) == 1 then
        local v = redis.call('INCRBY', key, str(delta))
        if v < 0 then
          redis.call('INCRBY', key, str(-v))
        end
      end
    end
  end
  settled = settled + 1
end
return settled
";
