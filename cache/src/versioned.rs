//! The versioned-fill protocol: a fill installs a value only if the cache holds no
//! newer version and the key was not invalidated for a newer one; an invalidation
//! deletes the key and leaves a tombstone with the version it was invalidated for. The
//! cache-aside workload fills and invalidates this way, and the lab's invalidators
//! invalidate this way, so both use these scripts and this tombstone.

use redis::aio::MultiplexedConnection;
use std::time::Duration;

/// Where a key's invalidated version is kept: this prefix, then the key.
pub const TOMBSTONE_PREFIX: &str = "coherence:invalidated:";

/// How long the lab's invalidators keep a tombstone (the workload keeps it for its TTL).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Where Redis keeps the version `key` was last invalidated for.
pub fn tombstone(key: &str) -> String {
    format!("{TOMBSTONE_PREFIX}{key}")
}

/// Installs a value unless the cache holds a newer one or the key was invalidated for a
/// newer version. KEYS: key, tombstone. ARGV: value, version, ttl ms.
pub const FILL_VERSIONED: &str = r#"
local cur = redis.call('GET', KEYS[1])
local new = tonumber(ARGV[2])
if cur then
  local ok, v = pcall(cjson.decode, cur)
  if ok and v['version'] and v['version'] >= new then return 0 end
end
local tomb = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tomb > new then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

/// Deletes a key and remembers the version it was invalidated for.
/// KEYS: key, tombstone. ARGV: version, ttl ms.
pub const INVALIDATE_VERSIONED: &str = r#"
redis.call('DEL', KEYS[1])
local tomb = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > tomb then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
return 1
"#;

/// Fills `key` with `value` (the JSON of `version`) for `ttl_ms` ms, unless refused;
/// whether it was installed.
pub async fn fill(
    con: &mut MultiplexedConnection,
    key: &str,
    value: &str,
    version: i64,
    ttl_ms: u64,
) -> redis::RedisResult<bool> {
    let installed: i64 = redis::Script::new(FILL_VERSIONED)
        .key(key)
        .key(tombstone(key))
        .arg(value)
        .arg(version)
        .arg(ttl_ms)
        .invoke_async(con)
        .await?;
    Ok(installed != 0)
}

/// Deletes `key`, keeping a tombstone of `version` for `ttl_ms` ms (unless one of a
/// newer version is there).
pub async fn invalidate(
    con: &mut MultiplexedConnection,
    key: &str,
    version: i64,
    ttl_ms: u64,
) -> redis::RedisResult<()> {
    let _: i64 = redis::Script::new(INVALIDATE_VERSIONED)
        .key(key)
        .key(tombstone(key))
        .arg(version)
        .arg(ttl_ms)
        .invoke_async(con)
        .await?;
    Ok(())
}
