//! The Redis coordinator: node registry, room placement and claims.
//!
//! Keys (prefix `relais:` by default; see docs/cluster.md):
//!
//! * `node:<id>` — STRING, the node's [`NodeInfo`] as JSON, `PX node_ttl`,
//!   rewritten every heartbeat. Its existence *is* the node's liveness.
//! * `nodes` — ZSET of node ids scored by the Redis time of their last
//!   heartbeat; members older than `node_ttl` are pruned by every heartbeat,
//!   and the key itself expires if no node heartbeats for a while.
//! * `room:<name>` — STRING, the owning node's id, `PX room_ttl`, refreshed by
//!   the owner every heartbeat and deleted by it when the room closes.
//!
//! All decisions that must be atomic run as Lua scripts, judged by Redis'
//! clock, never by a node's.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};
use tracing::{debug, error, info, warn};

/// Round-trip time of coordinator calls to Redis, by `op`.
pub const REDIS_RTT_MS: &str = "relais_redis_rtt_ms";
/// Failed coordinator calls to Redis, by `op` and `kind` (`timeout`, `io`, `redis`).
pub const REDIS_ERRORS: &str = "relais_redis_errors_total";

use crate::{
    select_node, BoxFuture, ClusterConfig, ClusterError, Coordinator, LocalSnapshot, NodeInfo,
    NodeState, Placement,
};

/// Where Redis is. `Debug` never shows the password.
#[derive(Clone, Default)]
pub struct RedisSettings {
    /// `host:port` (port defaults to 6379).
    pub address: String,
    /// ACL user name; empty = none.
    pub username: String,
    /// Password; empty = none.
    pub password: String,
    /// Database number.
    pub db: i64,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("address", &self.address)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("db", &self.db)
            .finish()
    }
}

/// `alive(id)`: the node record exists, expires (a record without TTL was not
/// written by a node), and is JSON whose `id` is `id`. Returns the record.
const LUA_ALIVE: &str = r#"
local function alive(id)
  if type(id) ~= 'string' or id == '' or string.len(id) > 64 then return nil end
  local key = NODE_PREFIX .. id
  local v = redis.pcall('GET', key)
  if type(v) ~= 'string' then return nil end
  if redis.call('PTTL', key) <= 0 then return nil end
  local ok, rec = pcall(cjson.decode, v)
  if not ok or type(rec) ~= 'table' or rec['id'] ~= id then return nil end
  return v
end
"#;

/// KEYS: node key, nodes zset, room keys to refresh…, room keys to release…
/// ARGV: id, instance, json, node_ttl, room_ttl, n_refresh, index ttl, first ("1"
/// on this process's first registration), http address.
/// Returns { ok ("1" / "0" = another process holds this id), redis_now_ms,
///           n_lost, replaced ids (comma-separated), (lost index, owner)…,
///           node records… }.
///
/// On its first registration a process takes over from the records of nodes
/// at its own HTTP address, its own id's included: it holds that address, so
/// they are processes that died (a crash, a kill) and would otherwise be taken
/// for alive — and sent rooms — until their records expire.
const LUA_HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = ARGV[8] == '1' and ARGV[9] ~= ''
local function at_my_address(rec)
  return first and type(rec) == 'table' and rec['http_address'] == ARGV[9]
end
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'string' then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and type(rec['instance']) == 'string'
     and rec['instance'] ~= ARGV[2] and redis.call('PTTL', KEYS[1]) > 0
     and not at_my_address(rec) then
    return {'0', tostring(now), '0'}
  end
end
local replaced = {}
if first then
  local ids = redis.pcall('ZRANGE', KEYS[2], 0, -1)
  if type(ids) == 'table' then
    for _, id in ipairs(ids) do
      local raw = id ~= ARGV[1] and alive(id)
      if raw then
        local ok, rec = pcall(cjson.decode, raw)
        if ok and at_my_address(rec) then
          redis.call('DEL', NODE_PREFIX .. id)
          redis.pcall('ZREM', KEYS[2], id)
          table.insert(replaced, id)
        end
      end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.pcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
redis.pcall('ZADD', KEYS[2], now, ARGV[1])
redis.pcall('PEXPIRE', KEYS[2], ARGV[7])
local out = {'1', tostring(now), '0', table.concat(replaced, ',')}
local lost = 0
local n = tonumber(ARGV[6])
for i = 3, 2 + n do
  local owner = redis.pcall('GET', KEYS[i])
  if type(owner) == 'string' and owner ~= ARGV[1] and alive(owner) then
    table.insert(out, tostring(i - 2))
    table.insert(out, owner)
    lost = lost + 1
  else
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[5])
  end
end
out[3] = tostring(lost)
for i = 3 + n, #KEYS do
  if redis.pcall('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
local ids = redis.pcall('ZRANGE', KEYS[2], 0, -1)
if type(ids) == 'table' then
  for _, id in ipairs(ids) do
    local rec = alive(id)
    if rec then table.insert(out, rec) end
  end
end
return out
"#;

/// KEYS: room key. ARGV: candidate id ('' = look up only), room_ttl, node prefix.
/// Returns {"1", owner, record} when a live node owns the room, {"2", candidate,
/// record} when it was claimed for the candidate, {"0"} when nobody owns it and
/// the candidate is not alive (or there is none).
const LUA_CLAIM: &str = r#"
local owner = redis.pcall('GET', KEYS[1])
if type(owner) == 'string' then
  local rec = alive(owner)
  if rec then return {'1', owner, rec} end
end
local crec = alive(ARGV[1])
if not crec then return {'0'} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'2', ARGV[1], crec}
"#;

/// KEYS: node key, nodes zset, room keys. ARGV: id, instance. Returns {"1"}
/// (every script answers a list: `run` reads one).
const LUA_LEAVE: &str = r#"
for i = 3, #KEYS do
  if redis.pcall('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
local cur = redis.pcall('GET', KEYS[1])
if type(cur) == 'string' then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and rec['instance'] == ARGV[2] then
    redis.call('DEL', KEYS[1])
    redis.pcall('ZREM', KEYS[2], ARGV[1])
  end
end
return {'1'}
"#;

fn script(body: &str, prefix: &str) -> Script {
    // The node-key prefix is baked in: it is configuration, not input.
    let prelude = format!(
        "local NODE_PREFIX = {}\n{}",
        lua_string(&format!("{prefix}node:")),
        LUA_ALIVE
    );
    Script::new(&format!("{prelude}\n{body}"))
}

/// A Lua string literal (the prefix comes from config; quote it safely).
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Clock difference with Redis above which a warning is logged.
const CLOCK_SKEW_WARN_MS: i64 = 2000;

/// Many nodes, one Redis. See the module documentation.
pub struct RedisCoordinator {
    id: String,
    config: ClusterConfig,
    me: Mutex<NodeInfo>,
    conn: ConnectionManager,
    address: String,
    heartbeat: Script,
    claim: Script,
    leave: Script,
    /// Rooms this node hosts or just claimed, with when that was last true.
    held: Mutex<HashMap<String, Instant>>,
    /// Rooms hosted here but claimed by another live node (logged once each).
    conflicts: Mutex<HashSet<String>>,
    /// Live nodes as of the last heartbeat.
    nodes: Mutex<Vec<NodeInfo>>,
    /// Whether a heartbeat of this process was accepted yet (the first one
    /// takes over from dead processes at this node's address).
    registered: AtomicBool,
    /// Nodes a relay from here could not reach: id → (that process's
    /// instance, until when no new room is placed there).
    unreachable: Mutex<HashMap<String, (String, Instant)>>,
    draining: AtomicBool,
    reachable: AtomicBool,
    duplicate: AtomicBool,
    skewed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisCoordinator {
    /// A coordinator for the node `me`. Does not connect yet: the first call
    /// does, and every call after a failure reconnects. A Redis that is down
    /// at start-up is thus not fatal.
    pub fn new(
        settings: &RedisSettings,
        config: ClusterConfig,
        me: NodeInfo,
    ) -> Result<Self, ClusterError> {
        let (host, port) = match settings.address.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>().map_err(|_| {
                    ClusterError::Unavailable(format!(
                        "redis.address {:?}: bad port",
                        settings.address
                    ))
                })?,
            ),
            _ => (settings.address.clone(), 6379),
        };
        let mut redis_info = RedisConnectionInfo::default().set_db(settings.db);
        if !settings.username.is_empty() {
            redis_info = redis_info.set_username(&settings.username);
        }
        if !settings.password.is_empty() {
            redis_info = redis_info.set_password(&settings.password);
        }
        let bad = |e: redis::RedisError| ClusterError::Unavailable(format!("redis client: {e}"));
        let info = ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(bad)?
            .set_redis_settings(redis_info);
        let client = redis::Client::open(info).map_err(bad)?;
        let timeout = Duration::from_millis(config.redis_timeout_ms);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config).map_err(bad)?;
        let prefix = config.key_prefix.clone();
        Ok(RedisCoordinator {
            id: me.id.clone(),
            me: Mutex::new(me),
            conn,
            address: settings.address.clone(),
            heartbeat: script(LUA_HEARTBEAT, &prefix),
            claim: script(LUA_CLAIM, &prefix),
            leave: script(LUA_LEAVE, &prefix),
            held: Mutex::new(HashMap::new()),
            conflicts: Mutex::new(HashSet::new()),
            nodes: Mutex::new(Vec::new()),
            registered: AtomicBool::new(false),
            unreachable: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            reachable: AtomicBool::new(true),
            duplicate: AtomicBool::new(false),
            skewed: AtomicBool::new(false),
            config,
        })
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}node:{id}", self.config.key_prefix)
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}room:{room}", self.config.key_prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.config.key_prefix)
    }

    /// Run one script invocation with the configured timeout. `op` names the
    /// call in `relais_redis_rtt_ms` / `relais_redis_errors_total`.
    async fn run(
        &self,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Vec<Vec<u8>>, ClusterError> {
        let mut conn = self.conn.clone();
        let timeout = Duration::from_millis(self.config.redis_timeout_ms);
        let started = Instant::now();
        let result =
            tokio::time::timeout(timeout, invocation.invoke_async::<Vec<Vec<u8>>>(&mut conn)).await;
        let result = match result {
            Ok(Ok(v)) => {
                metrics::histogram!(REDIS_RTT_MS, "op" => op)
                    .record(started.elapsed().as_secs_f64() * 1000.0);
                Ok(v)
            }
            Ok(Err(e)) => {
                let kind = if e.is_io_error() { "io" } else { "redis" };
                metrics::counter!(REDIS_ERRORS, "op" => op, "kind" => kind).increment(1);
                Err(ClusterError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                metrics::counter!(REDIS_ERRORS, "op" => op, "kind" => "timeout").increment(1);
                Err(ClusterError::Unavailable(format!(
                    "redis: no answer within {} ms",
                    self.config.redis_timeout_ms
                )))
            }
        };
        self.note_reachability(&result);
        result
    }

    fn note_reachability<T>(&self, result: &Result<T, ClusterError>) {
        let ok = result.is_ok();
        let was = self.reachable.swap(ok, Ordering::SeqCst);
        match (was, ok, result) {
            (true, false, Err(e)) => warn!(
                redis = %self.address, error = %e,
                "Redis unreachable: rooms on this node keep running; new rooms are refused until it returns"
            ),
            (false, true, _) => {
                info!(redis = %self.address, "Redis reachable again; node re-registered")
            }
            _ => {}
        }
    }

    /// Whether the last Redis call succeeded.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::SeqCst)
    }

    async fn claim(&self, room: &str, candidate: &str) -> Result<ClaimOutcome, ClusterError> {
        let mut inv = self.claim.key(self.room_key(room));
        inv.arg(candidate).arg(self.config.room_ttl_ms);
        let reply = self.run("place", inv).await?;
        let text = |i: usize| {
            reply
                .get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        match text(0).as_deref() {
            Some("0") => Ok(ClaimOutcome::Nobody),
            Some(status @ ("1" | "2")) => {
                let owner = text(1).unwrap_or_default();
                let record = reply.get(2).map(Vec::as_slice).unwrap_or_default();
                match NodeInfo::parse(record) {
                    Some(info) if info.id == owner => Ok(if status == "1" {
                        ClaimOutcome::Owned(info)
                    } else {
                        ClaimOutcome::Claimed(info)
                    }),
                    _ => {
                        warn!(%room, %owner, "node record in Redis is not a Relais node record; ignoring it");
                        Err(ClusterError::Unavailable(format!(
                            "corrupt record for node {owner}"
                        )))
                    }
                }
            }
            other => {
                warn!(%room, reply = ?other, "unexpected reply from the claim script");
                Err(ClusterError::Unavailable("unexpected claim reply".into()))
            }
        }
    }

    fn hold(&self, room: &str) {
        lock(&self.held).insert(room.to_string(), Instant::now());
    }

    fn holds(&self, room: &str) -> bool {
        lock(&self.held).contains_key(room)
    }

    fn my_info(&self) -> NodeInfo {
        lock(&self.me).clone()
    }

    async fn place_inner(&self, room: &str, forwarded: bool) -> Result<Placement, ClusterError> {
        if self.holds(room) || forwarded {
            // The room is (or is being placed) here: this node's own limits
            // decide, with figures at most a heartbeat old.
            if let Some(limit) = lock(&self.me).traffic_limit_reached() {
                return Err(ClusterError::LimitReached(limit));
            }
        }
        if self.holds(room) {
            return Ok(Placement::Local);
        }
        if self.duplicate.load(Ordering::SeqCst) {
            return Err(ClusterError::Unavailable(format!(
                "node id {} is used by another process",
                self.id
            )));
        }
        if forwarded {
            if self.is_draining() {
                return Err(ClusterError::Draining);
            }
            // Another node placed the room here; confirm (or take) the claim.
            return match self.claim(room, &self.id).await {
                Ok(ClaimOutcome::Owned(owner) | ClaimOutcome::Claimed(owner))
                    if owner.id != self.id =>
                {
                    Err(ClusterError::Moved {
                        room: room.to_string(),
                        owner: owner.id,
                    })
                }
                Ok(_) => {
                    self.hold(room);
                    Ok(Placement::Local)
                }
                Err(e) => {
                    // The forwarding node claimed the room for us a moment ago.
                    warn!(%room, error = %e, "cannot confirm the claim of a forwarded room; trusting the forwarder");
                    self.hold(room);
                    Ok(Placement::Local)
                }
            };
        }
        let region = lock(&self.me).region.clone();
        let exclude = self.is_draining().then_some(self.id.as_str());
        let mut tried: Vec<String> = Vec::new();
        for _ in 0..3 {
            let candidate = {
                let nodes = lock(&self.nodes);
                let unreachable = lock(&self.unreachable);
                let now = Instant::now();
                let skipped = |n: &NodeInfo| {
                    unreachable
                        .get(&n.id)
                        .is_some_and(|(instance, until)| *instance == n.instance && now < *until)
                };
                let remaining: Vec<NodeInfo> = nodes
                    .iter()
                    .filter(|n| !tried.contains(&n.id) && !skipped(n))
                    .cloned()
                    .collect();
                select_node(&remaining, &region, &self.config.node_selector, exclude)
                    .map(|n| n.id.clone())
                    .unwrap_or_default()
            };
            match self.claim(room, &candidate).await? {
                ClaimOutcome::Owned(owner) | ClaimOutcome::Claimed(owner) => {
                    if owner.id == self.id {
                        self.hold(room);
                        return Ok(Placement::Local);
                    }
                    return Ok(Placement::Remote(Box::new(owner)));
                }
                ClaimOutcome::Nobody if candidate.is_empty() => {
                    return Err(if self.is_draining() && lock(&self.nodes).len() <= 1 {
                        ClusterError::Draining
                    } else {
                        ClusterError::NoNodeAvailable
                    })
                }
                ClaimOutcome::Nobody => {
                    debug!(%room, %candidate, "candidate node is gone; trying another");
                    lock(&self.nodes).retain(|n| n.id != candidate);
                    tried.push(candidate);
                }
            }
        }
        Err(ClusterError::NoNodeAvailable)
    }

    async fn heartbeat_inner(&self, snapshot: LocalSnapshot) -> Result<Vec<String>, ClusterError> {
        let now = Instant::now();
        let grace = Duration::from_millis(self.config.room_ttl_ms);
        let local: HashSet<String> = snapshot.rooms.into_iter().collect();
        let (refresh, release) = {
            let mut held = lock(&self.held);
            for room in &local {
                held.insert(room.clone(), now);
            }
            let mut release = Vec::new();
            held.retain(|room, seen| {
                let keep = local.contains(room) || now.duration_since(*seen) < grace;
                if !keep {
                    release.push(room.clone());
                }
                keep
            });
            (held.keys().cloned().collect::<Vec<_>>(), release)
        };
        let json = {
            let mut me = lock(&self.me);
            me.stats = snapshot.stats;
            me.updated_at_ms = unix_ms();
            me.state = if self.is_draining() {
                NodeState::Draining
            } else {
                NodeState::Serving
            };
            serde_json::to_string(&*me)
                .map_err(|e| ClusterError::Unavailable(format!("encoding node record: {e}")))?
        };
        let (instance, http_address) = {
            let me = lock(&self.me);
            (me.instance.clone(), me.http_address.clone())
        };
        let first = !self.registered.load(Ordering::SeqCst);
        let mut inv = self.heartbeat.key(self.node_key(&self.id));
        inv.key(self.nodes_key());
        for room in refresh.iter().chain(release.iter()) {
            inv.key(self.room_key(room));
        }
        inv.arg(&self.id)
            .arg(&instance)
            .arg(&json)
            .arg(self.config.node_ttl_ms)
            .arg(self.config.room_ttl_ms)
            .arg(refresh.len())
            .arg(self.config.node_ttl_ms.saturating_mul(20))
            .arg(if first { "1" } else { "0" })
            .arg(&http_address);
        let sent_at = unix_ms();
        let reply = self.run("heartbeat", inv).await?;
        let text = |i: usize| {
            reply
                .get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let ok = text(0).as_deref() == Some("1");
        let redis_now: i64 = text(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        self.check_clock(sent_at, redis_now);
        if !ok {
            if !self.duplicate.swap(true, Ordering::SeqCst) {
                error!(
                    node_id = %self.id,
                    "another live process is registered with this node id; this node takes no new rooms \
                     and stays out of the registry until that record expires (set a unique cluster.node_id)"
                );
            }
            return Ok(Vec::new());
        }
        if self.duplicate.swap(false, Ordering::SeqCst) {
            info!(node_id = %self.id, "node id is free again; registered");
        }
        self.registered.store(true, Ordering::SeqCst);
        let replaced = text(3).unwrap_or_default();
        if !replaced.is_empty() {
            info!(
                %replaced, address = %http_address,
                "took over from nodes registered at this address whose processes are gone"
            );
        }
        let lost_count: usize = text(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut index = 4;
        let mut lost = Vec::new();
        for _ in 0..lost_count {
            let i: usize = text(index).and_then(|s| s.parse().ok()).unwrap_or(0);
            let owner = text(index + 1).unwrap_or_default();
            index += 2;
            if let Some(room) = i.checked_sub(1).and_then(|i| refresh.get(i)) {
                lost.push((room.clone(), owner));
            }
        }
        {
            let mut conflicts = lock(&self.conflicts);
            let mut held = lock(&self.held);
            for (room, owner) in &lost {
                held.remove(room);
                if conflicts.insert(room.clone()) {
                    warn!(
                        %room, %owner,
                        "room is hosted here but claimed by another live node: its participants \
                         are moved there"
                    );
                }
            }
            conflicts.retain(|r| lost.iter().any(|(l, _)| l == r));
        }
        let mut nodes = Vec::new();
        for raw in reply.iter().skip(index) {
            match NodeInfo::parse(raw) {
                Some(n) => nodes.push(n),
                None => debug!("skipping a node record that does not parse"),
            }
        }
        *lock(&self.nodes) = nodes;
        // Only rooms still open here need moving (closed ones are claimed a
        // little longer, see `held`).
        Ok(lost
            .into_iter()
            .map(|(room, _)| room)
            .filter(|room| local.contains(room))
            .collect())
    }

    fn check_clock(&self, local_ms: i64, redis_ms: i64) {
        if redis_ms == 0 {
            return;
        }
        let skew = local_ms - redis_ms;
        let off = skew.abs() > CLOCK_SKEW_WARN_MS + self.config.redis_timeout_ms as i64;
        if off && !self.skewed.swap(true, Ordering::SeqCst) {
            warn!(
                skew_ms = skew,
                "this node's clock is far from Redis' clock; liveness uses Redis' clock only, \
                 but timestamps in node records will be off"
            );
        } else if !off {
            self.skewed.store(false, Ordering::SeqCst);
        }
    }
}

enum ClaimOutcome {
    /// A live node already owns the room.
    Owned(NodeInfo),
    /// The room was free and is now claimed for the candidate.
    Claimed(NodeInfo),
    /// Free, and the candidate is not alive (or there was none).
    Nobody,
}

impl Coordinator for RedisCoordinator {
    fn node_id(&self) -> &str {
        &self.id
    }

    fn is_clustered(&self) -> bool {
        true
    }

    fn place(&self, room: &str, forwarded: bool) -> BoxFuture<'_, Result<Placement, ClusterError>> {
        let room = room.to_string();
        Box::pin(async move { self.place_inner(&room, forwarded).await })
    }

    fn locate(&self, room: &str) -> BoxFuture<'_, Result<Option<NodeInfo>, ClusterError>> {
        let room = room.to_string();
        Box::pin(async move {
            if self.holds(&room) {
                return Ok(Some(self.my_info()));
            }
            match self.claim(&room, "").await? {
                ClaimOutcome::Owned(n) | ClaimOutcome::Claimed(n) => Ok(Some(n)),
                ClaimOutcome::Nobody => Ok(None),
            }
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, ClusterError>> {
        Box::pin(async move {
            let mut nodes = lock(&self.nodes).clone();
            if !nodes.iter().any(|n| n.id == self.id) {
                nodes.push(self.my_info());
            }
            Ok(nodes)
        })
    }

    fn heartbeat(
        &self,
        snapshot: LocalSnapshot,
    ) -> BoxFuture<'_, Result<Vec<String>, ClusterError>> {
        Box::pin(self.heartbeat_inner(snapshot))
    }

    fn report_unreachable(&self, node: &NodeInfo) {
        let now = Instant::now();
        let until = now + Duration::from_millis(self.config.node_ttl_ms);
        let mut unreachable = lock(&self.unreachable);
        unreachable.retain(|_, (_, until)| now < *until);
        unreachable.insert(node.id.clone(), (node.instance.clone(), until));
    }

    fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        lock(&self.me).state = NodeState::Draining;
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let rooms: Vec<String> = lock(&self.held).drain().map(|(r, _)| r).collect();
            let instance = lock(&self.me).instance.clone();
            let mut inv = self.leave.key(self.node_key(&self.id));
            inv.key(self.nodes_key());
            for room in &rooms {
                inv.key(self.room_key(room));
            }
            inv.arg(&self.id).arg(&instance);
            match self.run("leave", inv).await {
                Ok(_) => info!(rooms = rooms.len(), "left the cluster"),
                Err(e) => {
                    warn!(error = %e, "could not deregister; the records expire on their own")
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_strings_are_quoted() {
        assert_eq!(lua_string("relais:node:"), "\"relais:node:\"");
        assert_eq!(lua_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\010\"");
    }

    #[test]
    fn debug_hides_the_password() {
        let s = RedisSettings {
            address: "h:1".into(),
            password: "hunter2".into(),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
