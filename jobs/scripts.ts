/**
 * The Lua scripts that make each job state change atomic in Redis. Every
 * transition checks the current status (and the attempt number for a worker's
 * verdict), so a cancel racing a finish, or a stale worker whose lease was
 * taken over, can never store a second result.
 */

/**
 * Every status change is announced: PUBLISH '<id> <status>' on <base>events
 * (SSE and gRPC Watch, jobs/events.ts), and a job with a webhook that reaches
 * a final status is put in the <base>webhooks due set (jobs/webhooks.ts). In
 * the same script as the change, so no change goes unannounced.
 */
const NOTIFY = `
local function notify(key, status)
  local base, id = string.match(key, '^(.*)job:([^:]+)$')
  redis.call('PUBLISH', base .. 'events', id .. ' ' .. status)
  if status ~= 'queued' and status ~= 'running' and redis.call('HEXISTS', key, 'webhook_url') == 1 then
    local t = redis.call('TIME')
    redis.call('ZADD', base .. 'webhooks', 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), id)
  end
end
`;

/**
 * KEYS: idem, job, stream, index. ARGV: useIdem, idemPx, maxQueued, id, jobKeyPrefix, hashPx, createdAt, field, value, ...
 * The index (a sorted set of every job by creation time, for listing) is trimmed of ids older than hashPx.
 * Returns {'existing', id} | {'full'} | {'new', entryId}.
 */
export const SUBMIT = `${NOTIFY}
if ARGV[1] == '1' then
  local ex = redis.call('GET', KEYS[1])
  if ex and redis.call('EXISTS', ARGV[5] .. ex) == 1 then return {'existing', ex} end
end
if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[3]) then return {'full'} end
redis.call('HSET', KEYS[2], unpack(ARGV, 8))
local eid = redis.call('XADD', KEYS[3], '*', 'id', ARGV[4])
redis.call('HSET', KEYS[2], 'entry', eid)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local now = tonumber(ARGV[7])
redis.call('ZADD', KEYS[4], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[6]))
if ARGV[1] == '1' then redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[2]) end
notify(KEYS[2], 'queued')
return {'new', eid}
`;

/**
 * A queued job past its queue deadline (before any attempt) becomes expired.
 * KEYS: job. ARGV: now. Returns 1 when it expired now.
 */
const EXPIRE_IF_DUE = `${NOTIFY}
local function expire_if_due(key, now)
  local f = redis.call('HMGET', key, 'status', 'attempts', 'expires_at')
  if f[1] == 'queued' and tonumber(f[2] or '0') == 0 and tonumber(now) > tonumber(f[3]) then
    redis.call('HSET', key, 'status', 'expired', 'finished_at', now, 'last_error', 'the job waited longer than its ttl_seconds in the queue and was never run')
    redis.call('HDEL', key, 'input')
    notify(key, 'expired')
    return 1
  end
  return 0
end
`;

export const EXPIRE = `${EXPIRE_IF_DUE}
return expire_if_due(KEYS[1], ARGV[1])
`;

/**
 * A worker takes a stream entry. KEYS: job. ARGV: now, consumer, entryId.
 * Returns {'gone'} | {'stale'} (an older entry of a re-queued job) | {'done', status}
 * | {'expired'} | {'exhausted', attempts} | {'run', attempts}.
 */
export const START = `${EXPIRE_IF_DUE}
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'gone'} end
if redis.call('HGET', KEYS[1], 'entry') ~= ARGV[3] then return {'stale'} end
if s ~= 'queued' and s ~= 'running' then return {'done', s} end
if expire_if_due(KEYS[1], ARGV[1]) == 1 then return {'expired'} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(redis.call('HGET', KEYS[1], 'max_attempts')) then return {'exhausted', tostring(attempts)} end
attempts = attempts + 1
redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts, 'started_at', ARGV[1], 'worker', ARGV[2])
notify(KEYS[1], 'running')
return {'run', tostring(attempts)}
`;

/**
 * A worker's verdict on its attempt. KEYS: job, result, stream, dead.
 * ARGV: attempt, status (succeeded|failed|queued), now, error, errorCode,
 *       resultPx (when the job has no result_ttl_ms), result ('' = none), resultBlob ('' = none), tombstonePx (the record outlives the result by it), deadReason ('' = none), model, id, resultVersion, deadMaxLen,
 *       resultType ('' = encoded tensors; application/x-ndjson for a video job's lines).
 * Returns 0 when the attempt no longer owns the job (cancelled, or taken over), else 1
 * (for 'queued': the new stream entry id).
 */
export const FINISH = `${NOTIFY}
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts')
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return 0 end
if ARGV[2] == 'queued' then
  local eid = redis.call('XADD', KEYS[3], '*', 'id', ARGV[12])
  redis.call('HSET', KEYS[1], 'status', 'queued', 'last_error', ARGV[4], 'error_code', ARGV[5], 'entry', eid)
  notify(KEYS[1], 'queued')
  return eid
end
local now = tonumber(ARGV[3])
local ttl = redis.call('HGET', KEYS[1], 'result_ttl_ms') or ARGV[6]
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', now, 'result_expires_at', now + tonumber(ttl), 'result_version', ARGV[13])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[4], 'error_code', ARGV[5]) end
redis.call('HDEL', KEYS[1], 'input')
if ARGV[2] == 'succeeded' then
  if ARGV[15] ~= '' then redis.call('HSET', KEYS[1], 'result_type', ARGV[15]) end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'result_blob', ARGV[8])
  else redis.call('SET', KEYS[2], ARGV[7], 'PX', ttl) end
end
if ARGV[10] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[14], '*', 'id', ARGV[12], 'model', ARGV[11], 'attempts', ARGV[1], 'reason', ARGV[10])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ttl) + tonumber(ARGV[9]))
notify(KEYS[1], ARGV[2])
return 1
`;

/**
 * Cancel. KEYS: job. ARGV: now, hashPx. Returns the status after the call, or false for no job.
 */
export const CANCEL = `${NOTIFY}
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return false end
if s == 'queued' or s == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1], 'last_error', 'cancelled by the client')
  redis.call('HDEL', KEYS[1], 'input')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  notify(KEYS[1], 'cancelled')
  return 'cancelled'
end
return s
`;

/**
 * Removes a stream group's consumers that hold no entry and read nothing for
 * a while: every broker process joins with a new name, and the group would
 * otherwise list every process that ever ran. Atomic, so an entry read
 * between the check and the removal is never dropped from the pending list.
 * KEYS: stream. ARGV: group, idleMs, name ('' = any consumer). Returns how many went.
 */
export const DROP_IDLE_CONSUMERS = `
local gone = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[2]) and (ARGV[3] == '' or f['name'] == ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    gone = gone + 1
  end
end
return gone
`;
