/**
 * Registry writes that read then write run as Lua scripts, so they are atomic
 * against another broker seeding the same Redis and against admin writes
 * (BullMQ style: each script documents its KEYS and ARGV).
 *
 * Records are compared as stored strings: both sides write canonical JSON.
 */

/**
 * seedModel: write a models.yaml entry unless an admin-API entry holds the name.
 *
 *   KEYS[1] {prefix}model:{name}   KEYS[2] {prefix}models
 *   ARGV[1] the record to write    ARGV[2] the name
 *   ARGV[3] a stored value that may be replaced even if it claims source "api"
 *           (the caller found it invalid or wrongly signed), or ""
 *
 * Returns { status, current }: status "put" (written), "same" (already equal),
 * or "shadowed" (an api entry holds the name; current = that value).
 */
export const SEED_MODEL = `
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('SADD', KEYS[2], ARGV[2])
  return {'same', ''}
end
if cur and cur ~= ARGV[3] then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and rec['source'] == 'api' then
    return {'shadowed', cur}
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return {'put', ''}
`;

/**
 * deleteFileModel: remove a record that came from models.yaml; leave api entries.
 *
 *   KEYS[1] {prefix}model:{name}   KEYS[2] {prefix}models
 *   ARGV[1] the name
 *
 * Returns 1 if a file record was deleted, 0 otherwise (a dangling set member is dropped).
 */
export const DELETE_FILE_MODEL = `
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
local ok, rec = pcall(cjson.decode, cur)
if ok and type(rec) == 'table' and rec['source'] == 'file' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
`;

/**
 * compareAndSet: write a record only if the stored one is still the one read
 * (optimistic concurrency for PATCH and for restoring records after data loss).
 *
 *   KEYS[1] {prefix}model:{name}   KEYS[2] {prefix}models
 *   ARGV[1] the record to write    ARGV[2] the name
 *   ARGV[3] the expected current value ("" = must be absent)
 *
 * Returns 1 if written, 0 if the stored value changed meanwhile.
 */
export const COMPARE_AND_SET = `
local cur = redis.call('GET', KEYS[1])
if (ARGV[3] == '' and cur) or (ARGV[3] ~= '' and cur ~= ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
`;
