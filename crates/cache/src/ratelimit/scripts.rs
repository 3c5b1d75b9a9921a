//! The limiter's Lua scripts: one decision (a key's GCRA and, when it has one, its user's, in
//! one atomic call), and giving back what a lease did not use.

/// The GCRA decision for up to `want` requests at once, of a key and optionally its user.
/// KEYS: the key's TAT, then (optional) the user's TAT. ARGV: the key's emission interval T
/// (µs), its capacity burst · T (µs), the expiry margin (ms), want (at least 1), the key's
/// reserve (requests extra grants leave alone); with a user: its T, capacity and reserve.
///
/// A request is granted only if both allowances admit it; then up to `want - 1` more out of
/// what exceeds both reserves, and both TATs advance by one interval each per granted request.
/// A refusal changes nothing. Returns `{granted (0 = refused), remaining, retry_after_us,
/// reset_us, allowance}` where `allowance` (1 = key, 2 = user) says whose figures these are:
/// on a grant, the one with fewer requests left (on a tie, the one that takes longer to be
/// full again, then the key's); on a refusal, the one to wait longer for, whose wait is then
/// the wait until both admit.
///
/// Numbers are Lua doubles, exact for integers below 2^53; they are written with `%.0f` so that
/// Redis never sees an exponent.
pub(super) const GCRA_SCRIPT: &str = r"
-- Redis 3.2 to 4 replicate scripts verbatim and refuse writes after TIME unless told to
-- replicate the effects instead (the only mode since Redis 5; there this is a no-op).
if redis.replicate_commands then redis.replicate_commands() end
local margin_ms = tonumber(ARGV[3])
local want = math.max(tonumber(ARGV[4]) or 1, 1)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local function allowance(key, interval, capacity, reserve)
  local tat = now
  local stored = redis.call('GET', key)
  if stored then
    tat = math.max(tonumber(stored) or now, now)
  end
  return {key = key, interval = interval, capacity = capacity,
          reserve = math.max(reserve or 0, 0), tat = tat,
          fit = math.floor((now + capacity - tat) / interval)}
end
local limits = {allowance(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5]))}
if KEYS[2] then
  limits[2] = allowance(KEYS[2], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
end
local refused, wait = 0, 0
for i, a in ipairs(limits) do
  if a.fit < 1 then
    local w = a.tat + a.interval - a.capacity - now
    if refused == 0 or w > wait then
      refused, wait = i, w
    end
  end
end
if refused > 0 then
  return {0, 0, wait, limits[refused].tat - now, refused}
end
local extras = want - 1
for _, a in ipairs(limits) do
  extras = math.min(extras, math.max(a.fit - 1 - a.reserve, 0))
end
local granted = 1 + extras
local tightest, least, reset = 1, nil, 0
for i, a in ipairs(limits) do
  local new_tat = a.tat + granted * a.interval
  local ttl_ms = math.ceil((new_tat - now) / 1000) + margin_ms
  redis.call('SET', a.key, string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
  local left = math.floor((a.capacity - (new_tat - now)) / a.interval)
  if least == nil or left < least or (left == least and new_tat - now > reset) then
    tightest, least, reset = i, left, new_tat - now
  end
end
return {granted, least, 0, reset, tightest}
";

/// Gives back requests a lease did not use. KEYS: the key's TAT, then (optional) the user's.
/// ARGV: the expiry margin (ms), then per key what to give back (µs: intervals times requests).
/// Each `TAT` moves back by its amount; at or before `now` the allowance is full, which a
/// missing key says too. Returns how many of the keys gave something back.
pub(super) const RETURN_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local margin_ms = tonumber(ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local returned = 0
for i, key in ipairs(KEYS) do
  local amount = tonumber(ARGV[i + 1])
  local stored = tonumber(redis.call('GET', key))
  if stored then
    local tat = stored - amount
    if tat <= now then
      redis.call('DEL', key)
    else
      local ttl_ms = math.ceil((tat - now) / 1000) + margin_ms
      redis.call('SET', key, string.format('%.0f', tat), 'PX', string.format('%.0f', ttl_ms))
    end
    returned = returned + 1
  end
end
return returned
";
