//! Server configuration: LiveKit-compatible YAML, environment and flag overrides.
//!
//! Loading order (later wins), as LiveKit does:
//! 1. built-in defaults ([`Config::default`], LiveKit's defaults);
//! 2. the YAML document: `--config-body` / `LIVEKIT_CONFIG` (the YAML *content*),
//!    else the file named by `--config` / `LIVEKIT_CONFIG_FILE`;
//! 3. environment variables and flags (clap maps `LIVEKIT_KEYS`, `NODE_IP`,
//!    `REDIS_HOST`, ... onto the flags, see [`crate::cli::Cli`]);
//! 4. development-mode defaults (`--dev` or `development: true`) for whatever is
//!    still unset.
//!
//! Unknown keys are not fatal: each one becomes a warning naming its path
//! (e.g. `rtc.udpport`), kept in [`Config::warnings`] and logged by
//! [`Config::log_warnings`]. A value of the wrong type or out of range is an
//! error naming the key ([`ConfigError::Invalid`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use relais_auth::{KeyError, KeyProvider};
use relais_proto::limits::FieldLimits;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::cli::Cli;

/// The API key LiveKit's `--dev` mode configures when no key is given.
pub const DEV_API_KEY: &str = "devkey";
/// The secret of [`DEV_API_KEY`].
pub const DEV_API_SECRET: &str = "secret";
/// The single muxed UDP port used in development mode.
pub const DEV_UDP_PORT: u16 = 7882;
/// The longest `rtc.udp_port` range: one shard per port, 256 shards at most.
pub const MAX_UDP_PORTS: usize = 256;

/// Errors from loading or validating the configuration. Messages name the
/// offending key and never contain a secret.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Io {
        /// Path of the file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The YAML document is malformed.
    #[error("invalid YAML in {origin}: {message}")]
    Yaml {
        /// Where the document came from (a path, or `LIVEKIT_CONFIG`).
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A key has a bad value (wrong type, out of range, ...).
    #[error("invalid value for config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `rtc.udp_port`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The API keys are unusable.
    #[error("invalid API keys ({origin}): {source}")]
    Keys {
        /// Where the keys came from (`keys`, `key_file`, `--keys/LIVEKIT_KEYS`).
        origin: String,
        /// The underlying error.
        #[source]
        source: KeyError,
    },
    /// No API key is configured and development mode is off.
    #[error(
        "no API keys configured: set `keys` (or `key_file`) in the config file, \
         pass --keys / LIVEKIT_KEYS, or run with --dev"
    )]
    NoKeys,
}

/// The whole server configuration. Field names are LiveKit's YAML keys.
///
/// `Debug` prints the redacted form ([`Config::redacted_json`]): no secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Main HTTP port: WebSocket signalling, Twirp, validate. Default 7880.
    /// 0 lets the OS choose (useful in tests).
    pub port: u16,
    /// IP addresses to listen on. Empty = all interfaces.
    pub bind_addresses: Vec<String>,
    /// WebRTC transport settings.
    pub rtc: RtcConfig,
    /// Redis (multi-node). Empty address = single node, no Redis.
    pub redis: RedisConfig,
    /// API key → secret.
    #[serde(deserialize_with = "de_string_map")]
    pub keys: BTreeMap<String, String>,
    /// A YAML file of `key: secret` lines, merged with `keys`.
    pub key_file: Option<String>,
    /// Room defaults.
    pub room: RoomConfig,
    /// What the node takes on before it refuses newcomers.
    pub limit: LimitConfig,
    /// Webhook delivery.
    pub webhook: WebhookConfig,
    /// Logging.
    pub logging: LoggingConfig,
    /// Prometheus metrics endpoint.
    pub prometheus: PrometheusConfig,
    /// Deprecated LiveKit spelling of `prometheus.port`; folded into it.
    #[serde(skip_serializing)]
    pub prometheus_port: Option<u16>,
    /// Region of this node (multi-node routing).
    pub region: String,
    /// Multi-node settings (used when `redis.address` is set).
    pub cluster: relais_cluster::ClusterConfig,
    /// Seconds a draining node (after SIGTERM) waits for its participants to
    /// leave before it disconnects them and exits. Default 30; 0 = exit at once.
    pub drain_timeout: u32,
    /// Development mode (`--dev`).
    pub development: bool,
    /// Warnings gathered while loading (unknown keys, ...). Not a config key.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 7880,
            bind_addresses: Vec::new(),
            rtc: RtcConfig::default(),
            redis: RedisConfig::default(),
            keys: BTreeMap::new(),
            key_file: None,
            room: RoomConfig::default(),
            limit: LimitConfig::default(),
            webhook: WebhookConfig::default(),
            logging: LoggingConfig::default(),
            prometheus: PrometheusConfig::default(),
            prometheus_port: None,
            region: String::new(),
            cluster: relais_cluster::ClusterConfig::default(),
            drain_timeout: 30,
            development: false,
            warnings: Vec::new(),
        }
    }
}

/// `rtc.udp_port`: one port (`7882`) or, as LiveKit accepts, a range
/// (`"7882-7889"`). With one port a receive thread hands each datagram to the
/// shard that owns its session; with a range there is one shard per port, and
/// each shard reads its own socket (no hand-off between threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPorts {
    pub first: u16,
    pub last: u16,
}

impl UdpPorts {
    pub fn single(port: u16) -> Self {
        UdpPorts {
            first: port,
            last: port,
        }
    }

    /// How many ports the range holds (at least one).
    pub fn count(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for UdpPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for UdpPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "{s:?} is not a port (1-65535) or a range like 7882-7889"
            )),
            Ok(p) => Ok(p),
        };
        let ports = match s.split_once('-') {
            Some((first, last)) => UdpPorts {
                first: port(first)?,
                last: port(last)?,
            },
            None => UdpPorts::single(port(s)?),
        };
        if ports.first > ports.last {
            return Err(format!("{s:?}: the range ends before it starts"));
        }
        Ok(ports)
    }
}

/// A single port is written as a number (as LiveKit's YAML has it), a range as a string.
impl Serialize for UdpPorts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            serializer.serialize_u16(self.first)
        } else {
            serializer.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for UdpPorts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// `rtc:` — WebRTC transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RtcConfig {
    /// Muxed UDP port(s) for all media (dev: 7882): one port, or a range
    /// with one shard per port (see [`UdpPorts`]).
    pub udp_port: Option<UdpPorts>,
    /// ICE over TCP port (passive host candidates, RFC 6544 with RFC 4571
    /// framing), bound on the same address as the UDP port. Default 7881; 0
    /// disables.
    pub tcp_port: u16,
    /// Advertise only the ICE-TCP candidate, not the UDP one: for testing
    /// ICE-TCP with real clients, and for networks where UDP never gets
    /// through. The UDP port stays bound. Default false; needs `tcp_port`.
    pub tcp_only: bool,
    /// First UDP port of the range. Default 50000.
    pub port_range_start: u16,
    /// Last UDP port of the range. Default 60000.
    pub port_range_end: u16,
    /// Discover and advertise the public IP (STUN). Default false.
    pub use_external_ip: bool,
    /// IP advertised in ICE candidates (overrides discovery).
    pub node_ip: Option<String>,
    /// Relais: helper threads that drive a large room's subscriber sessions
    /// next to its shard thread, so that one room's fan-out is not bound to
    /// one core. Default: one fewer than the cores; 0 disables.
    pub fan_out_threads: Option<usize>,
    /// Relais: how many sessions must be due at once in a room for its shard
    /// to hand them to the helpers. Default 128.
    pub fan_out_min_sessions: usize,
    /// Relais: datagrams a room may write in one turn of its shard's timer
    /// round before the datagrams and rooms waiting meanwhile go next (a
    /// large room's frame, driven on its shard's thread, is cut into turns).
    /// Default 256; 0 never cuts.
    pub drive_turn_datagrams: usize,
    /// Relais: send forwarded audio without str0m's per-session drive
    /// (Relais protects the packets and writes their sender reports). Default
    /// true.
    pub direct_audio: bool,
    /// Relais: the same for forwarded video; Relais also answers the
    /// subscribers' NACKs for it (RTX). Default true.
    pub direct_video: bool,
    /// Relais: read publishers' RTP without str0m once a stream is known
    /// (Relais opens it and sends the NACKs and receiver reports). Default
    /// true.
    pub direct_ingress: bool,
    /// Relais: milliseconds a room's periodic work (str0m's timers, NACKs and
    /// receiver reports to publishers, the layer review) may wait for a
    /// wake-up a packet causes, before the shard wakes for it alone. Copies
    /// never wait. Default 10; 0 wakes on every deadline.
    pub timer_slack_ms: u64,
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            udp_port: None,
            tcp_port: 7881,
            tcp_only: false,
            port_range_start: 50000,
            port_range_end: 60000,
            use_external_ip: false,
            node_ip: None,
            fan_out_threads: None,
            fan_out_min_sessions: 128,
            drive_turn_datagrams: 256,
            direct_audio: true,
            direct_video: true,
            direct_ingress: true,
            timer_slack_ms: 10,
        }
    }
}

/// `redis:` — shared state for multi-node deployments. `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `host:port`. Empty = Redis disabled.
    pub address: String,
    /// ACL user name.
    pub username: String,
    /// Password (redacted in [`Config::redacted_json`]).
    pub password: String,
    /// Database number.
    pub db: u32,
}

impl RedisConfig {
    /// Whether Redis is configured.
    pub fn is_configured(&self) -> bool {
        !self.address.is_empty()
    }
}

/// `room:` — defaults for rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    /// Create a room when a participant joins one that does not exist. Default true.
    pub auto_create: bool,
    /// Seconds an empty room (nobody ever joined) stays open. Default 300.
    pub empty_timeout: u32,
    /// Seconds a room stays open after the last participant left. Default 20.
    pub departure_timeout: u32,
    /// Maximum participants per room; 0 = unlimited.
    pub max_participants: u32,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            auto_create: true,
            empty_timeout: 300,
            departure_timeout: 20,
            max_participants: 0,
        }
    }
}

/// `limit:` — when the node turns newcomers away, and how large names,
/// metadata and attributes may be (0 = no limit). Those already connected
/// are never affected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitConfig {
    /// Tracks in and out (published plus subscribed) at which the node takes
    /// no new rooms and refuses joins into its rooms (LiveKit's key).
    pub num_tracks: u32,
    /// UDP bytes per second in and out at which, likewise (LiveKit's key).
    pub bytes_per_sec: f64,
    /// A shard that worked more than this fraction of the last second refuses
    /// joins into its rooms until it is below it again (from 0 = off to 1):
    /// admission before the shard falls behind, rather than after. Relais's
    /// own key.
    pub shard_busy_fraction: f64,
    /// Most video tracks one participant receives at once; more wait until
    /// one ends (LiveKit's key; 0 = no limit).
    pub subscription_limit_video: u32,
    /// Likewise for audio tracks.
    pub subscription_limit_audio: u32,
    /// Bytes of participant or room metadata (LiveKit's key; default 512 KiB).
    pub max_metadata_size: u32,
    /// Bytes of a participant's attributes, keys and values (default 64 KiB).
    pub max_attributes_size: u32,
    /// Bytes of a room name (default 256).
    pub max_room_name_length: u32,
    /// Bytes of a participant identity (default 256).
    pub max_participant_identity_length: u32,
    /// Bytes of a participant display name (default 256).
    pub max_participant_name_length: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        let fields = FieldLimits::default();
        LimitConfig {
            num_tracks: 0,
            bytes_per_sec: 0.0,
            shard_busy_fraction: 0.0,
            subscription_limit_video: 0,
            subscription_limit_audio: 0,
            max_metadata_size: fields.max_metadata_size,
            max_attributes_size: fields.max_attributes_size,
            max_room_name_length: fields.max_room_name_length,
            max_participant_identity_length: fields.max_participant_identity_length,
            max_participant_name_length: fields.max_participant_name_length,
        }
    }
}

impl LimitConfig {
    /// The size limits, for the join, the signal path and the room API.
    pub fn field_limits(&self) -> FieldLimits {
        FieldLimits {
            max_metadata_size: self.max_metadata_size,
            max_attributes_size: self.max_attributes_size,
            max_room_name_length: self.max_room_name_length,
            max_participant_identity_length: self.max_participant_identity_length,
            max_participant_name_length: self.max_participant_name_length,
        }
    }
}

/// `webhook:` — event delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Endpoints to POST events to.
    pub urls: Vec<String>,
    /// API key whose secret signs the webhook JWT; must be one of the keys.
    pub api_key: String,
}

/// `logging:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoggingConfig {
    /// `trace`, `debug`, `info`, `warn` or `error`. Default `info` (`debug` in dev).
    /// Also accepts `tracing` filter directives, e.g.
    /// `info,relais_media::room=debug,str0m=warn`.
    pub level: String,
    /// JSON log lines.
    pub json: bool,
    /// Level per component, as LiveKit's `logging.component_levels`: the keys
    /// are Rust module paths (`relais_media`, `relais_media::room`, `str0m`,
    /// `relais_server::signal`, ...), the values levels. Applied after `level`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub component_levels: BTreeMap<String, String>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            json: false,
            component_levels: BTreeMap::new(),
        }
    }
}

impl LoggingConfig {
    /// The `tracing` filter these settings mean: `level`, then one
    /// `component=level` directive per entry of `component_levels`.
    pub fn filter_directives(&self) -> String {
        let mut directives = self.level.trim().to_ascii_lowercase();
        for (component, level) in &self.component_levels {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(component.trim());
            directives.push('=');
            directives.push_str(&level.trim().to_ascii_lowercase());
        }
        directives
    }
}

/// `prometheus:` — metrics endpoint. `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrometheusConfig {
    /// Port of the `/metrics` listener; 0 = disabled.
    pub port: u16,
    /// Basic-auth user name (optional).
    pub username: String,
    /// Basic-auth password (redacted in [`Config::redacted_json`]).
    pub password: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Config {}", self.redacted_json())?;
        if !self.warnings.is_empty() {
            write!(f, " warnings: {:?}", self.warnings)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("db", &self.db)
            .finish()
    }
}

impl fmt::Debug for PrometheusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusConfig")
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .finish()
    }
}

fn redact(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "***"
    }
}

/// Accepts string, number or boolean values (an all-digit secret parses as a
/// YAML number) and returns them as strings.
fn de_string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    let raw = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
    raw.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            Value::Null => Ok((k, String::new())),
            _ => Err(D::Error::custom(format!(
                "the secret of key {k:?} must be a string"
            ))),
        })
        .collect()
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

impl Config {
    /// Loads the configuration for `cli`: file or body, then flags/env, then
    /// development defaults, then validation.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let (doc, origin) = match (&cli.config_body, &cli.config) {
            (Some(body), path) if !body.trim().is_empty() => {
                let mut warnings = Vec::new();
                if path.is_some() {
                    warnings.push(
                        "both --config-body/LIVEKIT_CONFIG and --config are set; using the config body"
                            .to_string(),
                    );
                }
                (Some((body.clone(), warnings)), "LIVEKIT_CONFIG".to_string())
            }
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                (Some((text, Vec::new())), path.display().to_string())
            }
            _ => (None, String::new()),
        };
        let (mut config, explicit) = match doc {
            Some((text, warnings)) => {
                let (mut c, explicit) = Self::from_yaml_str(&text, &origin)?;
                c.warnings.splice(0..0, warnings);
                (c, explicit)
            }
            None => (Config::default(), Explicit::default()),
        };
        config.apply_cli(cli, &explicit)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a YAML document (no overrides, no dev defaults). Unknown keys are
    /// recorded in [`Config::warnings`]. `origin` names the document in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let (mut c, _) = Self::from_yaml_str(text, origin)?;
        c.finish_parse();
        c.validate()?;
        Ok(c)
    }

    fn from_yaml_str(text: &str, origin: &str) -> Result<(Config, Explicit), ConfigError> {
        let value: Value = if is_blank_yaml(text) {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
                origin: origin.to_string(),
                message: yaml_message(&e.to_string()),
            })?
        };
        let mut value = match value {
            Value::Object(_) => value,
            Value::Null => Value::Object(Default::default()),
            other => {
                return Err(ConfigError::Yaml {
                    origin: origin.to_string(),
                    message: format!(
                        "the document must be a map of settings, not {}",
                        kind_of(&other)
                    ),
                })
            }
        };
        strip_nulls(&mut value);
        let explicit = Explicit {
            log_level: value.pointer("/logging/level").is_some(),
        };
        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: e.into_inner().to_string(),
            }
        })?;
        config.warnings.extend(
            unknown
                .into_iter()
                .map(|k| format!("unknown config key `{k}` ignored")),
        );
        Ok((config, explicit))
    }

    fn finish_parse(&mut self) {
        if let Some(p) = self.prometheus_port.take() {
            if self.prometheus.port == 0 {
                self.prometheus.port = p;
            }
        }
    }

    fn apply_cli(&mut self, cli: &Cli, explicit: &Explicit) -> Result<(), ConfigError> {
        self.finish_parse();
        if let Some(port) = cli.port {
            self.port = port;
        }
        if !cli.bind.is_empty() {
            self.bind_addresses = cli
                .bind
                .iter()
                .map(|b| b.trim().to_string())
                .filter(|b| !b.is_empty())
                .collect();
        }
        if let Some(p) = cli.udp_port {
            self.rtc.udp_port = Some(p);
        }
        if let Some(ip) = &cli.node_ip {
            self.rtc.node_ip = Some(ip.clone());
        }
        if let Some(host) = &cli.redis_host {
            self.redis.address = host.clone();
        }
        if let Some(pw) = &cli.redis_password {
            self.redis.password = pw.clone();
        }
        if let Some(region) = &cli.region {
            self.region = region.clone();
        }
        if let Some(kf) = &cli.key_file {
            self.key_file = Some(kf.display().to_string());
        }
        if let Some(keys) = &cli.keys {
            if !keys.trim().is_empty() {
                let provider =
                    KeyProvider::from_env_syntax(keys).map_err(|source| ConfigError::Keys {
                        origin: "--keys/LIVEKIT_KEYS".into(),
                        source,
                    })?;
                self.keys = provider
                    .api_keys()
                    .map(|k| (k.to_string(), provider.secret(k).unwrap_or("").to_string()))
                    .collect();
            }
        }
        if cli.dev {
            self.development = true;
        }
        if self.development {
            self.apply_dev_defaults(cli, explicit);
        }
        Ok(())
    }

    fn apply_dev_defaults(&mut self, cli: &Cli, explicit: &Explicit) {
        if self.keys.is_empty() && self.key_file.is_none() {
            self.keys
                .insert(DEV_API_KEY.to_string(), DEV_API_SECRET.to_string());
        }
        if cli.bind.is_empty() && self.bind_addresses.is_empty() {
            self.bind_addresses = vec!["127.0.0.1".to_string()];
            if ipv6_loopback_available() {
                self.bind_addresses.push("::1".to_string());
            }
        }
        if self.rtc.udp_port.is_none() {
            self.rtc.udp_port = Some(UdpPorts::single(DEV_UDP_PORT));
        }
        if !explicit.log_level {
            self.logging.level = "debug".into();
        }
    }

    /// Checks values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        for (i, b) in self.bind_addresses.iter().enumerate() {
            if b.parse::<IpAddr>().is_err() {
                return Err(invalid(
                    &format!("bind_addresses[{i}]"),
                    format!("{b:?} is not an IP address"),
                ));
            }
        }
        if let Some(ip) = &self.rtc.node_ip {
            if ip.parse::<IpAddr>().is_err() {
                return Err(invalid(
                    "rtc.node_ip",
                    format!("{ip:?} is not an IP address"),
                ));
            }
        }
        if let Some(ports) = self.rtc.udp_port {
            // A shard's number is two hex digits of each ICE ufrag.
            if ports.count() > MAX_UDP_PORTS {
                return Err(invalid(
                    "rtc.udp_port",
                    format!(
                        "{ports} holds {} ports; at most {MAX_UDP_PORTS} (one shard each)",
                        ports.count()
                    ),
                ));
            }
        }
        if !(self.limit.bytes_per_sec >= 0.0 && self.limit.bytes_per_sec.is_finite()) {
            return Err(invalid(
                "limit.bytes_per_sec",
                format!("{} is not a byte rate", self.limit.bytes_per_sec),
            ));
        }
        if !(0.0..=1.0).contains(&self.limit.shard_busy_fraction) {
            return Err(invalid(
                "limit.shard_busy_fraction",
                format!(
                    "{} is not a fraction from 0 (off) to 1",
                    self.limit.shard_busy_fraction
                ),
            ));
        }
        if self.rtc.tcp_only && self.rtc.tcp_port == 0 {
            return Err(invalid(
                "rtc.tcp_only",
                "needs rtc.tcp_port (ICE over TCP is off)".into(),
            ));
        }
        if self.rtc.port_range_start > self.rtc.port_range_end {
            return Err(invalid(
                "rtc.port_range_start",
                format!(
                    "{} is greater than rtc.port_range_end ({})",
                    self.rtc.port_range_start, self.rtc.port_range_end
                ),
            ));
        }
        if self.rtc.udp_port.is_none() && self.rtc.port_range_start == 0 {
            return Err(invalid(
                "rtc.port_range_start",
                "must be set (1-65535) when rtc.udp_port is not set".into(),
            ));
        }
        let level = self.logging.level.trim().to_ascii_lowercase();
        let is_directives = level.contains('=') || level.contains(',');
        if !is_directives && !LOG_LEVELS.contains(&level.as_str()) {
            return Err(invalid(
                "logging.level",
                format!(
                    "{:?} is not one of {} (or filter directives such as \
                     \"info,relais_media=debug\")",
                    self.logging.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if is_directives {
            if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
                return Err(invalid(
                    "logging.level",
                    format!("{:?} is not a valid filter: {e}", self.logging.level),
                ));
            }
        }
        for (component, level) in &self.logging.component_levels {
            let key = format!("logging.component_levels.{component}");
            if !LOG_LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    &key,
                    format!("{level:?} is not one of {}", LOG_LEVELS.join(", ")),
                ));
            }
            let valid_target = !component.is_empty()
                && component
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-');
            if !valid_target {
                return Err(invalid(
                    &key,
                    "a component is a module path such as relais_media::room".into(),
                ));
            }
        }
        if let Err(message) = self.cluster.check() {
            let key = message
                .split(' ')
                .next()
                .unwrap_or("cluster")
                .trim_end_matches(':');
            return Err(invalid(key, message.clone()));
        }
        if !self.webhook.urls.is_empty() && self.webhook.api_key.is_empty() {
            return Err(invalid(
                "webhook.api_key",
                "required when webhook.urls is set".into(),
            ));
        }
        Ok(())
    }

    /// The API keys: `keys` (or `--keys`/`LIVEKIT_KEYS`) merged with `key_file`.
    ///
    /// Errors when no key is configured (outside development mode, which
    /// always has `devkey`), when a secret is empty, or when `webhook.api_key`
    /// is not among the keys.
    pub fn key_provider(&self) -> Result<KeyProvider, ConfigError> {
        let mut provider =
            KeyProvider::from_map(self.keys.clone()).map_err(|source| ConfigError::Keys {
                origin: "keys".into(),
                source,
            })?;
        if let Some(path) = &self.key_file {
            let from_file =
                KeyProvider::from_key_file(path).map_err(|source| ConfigError::Keys {
                    origin: "key_file".into(),
                    source,
                })?;
            provider
                .merge(from_file)
                .map_err(|source| ConfigError::Keys {
                    origin: "key_file".into(),
                    source,
                })?;
        }
        if provider.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        if !self.webhook.api_key.is_empty() && provider.secret(&self.webhook.api_key).is_none() {
            return Err(ConfigError::Invalid {
                key: "webhook.api_key".into(),
                message: format!(
                    "{:?} is not one of the configured API keys",
                    self.webhook.api_key
                ),
            });
        }
        Ok(provider)
    }

    /// Logs every entry of [`Config::warnings`] with `tracing::warn!`. Call it
    /// once logging is set up.
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
    }

    /// The effective configuration as JSON with secrets replaced by `"***"`
    /// (key secrets, Redis and Prometheus passwords). Safe to print or log.
    pub fn redacted_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(Value::Object(keys)) = v.get_mut("keys") {
            for s in keys.values_mut() {
                *s = Value::String("***".into());
            }
        }
        for ptr in ["/redis/password", "/prometheus/password"] {
            if let Some(p) = v.pointer_mut(ptr) {
                if p.as_str().is_some_and(|s| !s.is_empty()) {
                    *p = Value::String("***".into());
                }
            }
        }
        v
    }

    /// Addresses to listen on: `bind_addresses`, or `0.0.0.0` when empty.
    pub fn listen_ips(&self) -> Vec<IpAddr> {
        if self.bind_addresses.is_empty() {
            return vec![IpAddr::from([0, 0, 0, 0])];
        }
        self.bind_addresses
            .iter()
            .filter_map(|b| b.parse().ok())
            .collect()
    }

    /// Path of the key file, if any.
    pub fn key_file_path(&self) -> Option<&Path> {
        self.key_file.as_deref().map(Path::new)
    }
}

/// Which settings the YAML set explicitly (so dev defaults do not override them).
#[derive(Debug, Default)]
struct Explicit {
    log_level: bool,
}

fn ipv6_loopback_available() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// Parser messages may quote the offending source line, which could hold a
/// secret: keep only the first line of the message.
fn yaml_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or("").trim();
    first
        .strip_prefix("error:")
        .unwrap_or(first)
        .trim()
        .to_string()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// YAML `key:` with no value means "default", as in LiveKit (Go zero values).
/// Inside `keys` a null stays, so that `devkey:` is reported as an empty secret.
fn strip_nulls(v: &mut Value) {
    if let Value::Object(map) = v {
        map.retain(|_, v| !v.is_null());
        for (k, v) in map.iter_mut() {
            if k != "keys" {
                strip_nulls(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, "test.yaml")
    }

    fn load(cli: Cli) -> Result<Config, ConfigError> {
        Config::load(&cli)
    }

    fn body(text: &str) -> Cli {
        Cli {
            config_body: Some(text.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_livekits() {
        let c = Config::default();
        assert_eq!(c.port, 7880);
        assert!(c.bind_addresses.is_empty());
        assert_eq!(c.rtc.udp_port, None);
        assert_eq!(c.rtc.tcp_port, 7881);
        assert_eq!(
            (c.rtc.port_range_start, c.rtc.port_range_end),
            (50000, 60000)
        );
        assert!(!c.rtc.use_external_ip);
        assert!(c.room.auto_create);
        assert_eq!(c.room.empty_timeout, 300);
        assert_eq!(c.room.departure_timeout, 20);
        assert_eq!(c.room.max_participants, 0);
        assert_eq!(c.logging.level, "info");
        assert!(!c.redis.is_configured());
        assert_eq!(yaml("").unwrap(), c);
        assert_eq!(yaml("# only a comment\n").unwrap(), c);
        assert_eq!(c.listen_ips(), vec![IpAddr::from([0, 0, 0, 0])]);
    }

    #[test]
    fn full_livekit_yaml() {
        let c = yaml(
            r#"
port: 7890
bind_addresses: ["127.0.0.1", "::1"]
rtc:
  udp_port: 7882
  tcp_port: 7883
  port_range_start: 40000
  port_range_end: 40100
  use_external_ip: true
  node_ip: 10.1.2.3
redis:
  address: redis:6379
  username: u
  password: p
  db: 2
keys:
  APIabc: secret1
  numeric: 12345
key_file: /etc/keys.yaml
room:
  auto_create: false
  empty_timeout: 60
  departure_timeout: 5
  max_participants: 12
limit:
  num_tracks: 400
  bytes_per_sec: 2.5e8
  max_metadata_size: 1024
webhook:
  api_key: APIabc
  urls: [http://hook/a, http://hook/b]
logging:
  level: warn
  json: true
prometheus:
  port: 6789
  username: m
  password: mp
region: eu-west
development: false
"#,
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.port, 7890);
        assert_eq!(c.bind_addresses, ["127.0.0.1", "::1"]);
        assert_eq!(c.rtc.udp_port, Some(UdpPorts::single(7882)));
        assert_eq!(c.rtc.tcp_port, 7883);
        assert_eq!(
            (c.rtc.port_range_start, c.rtc.port_range_end),
            (40000, 40100)
        );
        assert!(c.rtc.use_external_ip);
        assert_eq!(c.rtc.node_ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(c.redis.address, "redis:6379");
        assert_eq!(
            (
                c.redis.username.as_str(),
                c.redis.password.as_str(),
                c.redis.db
            ),
            ("u", "p", 2)
        );
        assert_eq!(c.keys["APIabc"], "secret1");
        assert_eq!(c.keys["numeric"], "12345");
        assert_eq!((c.limit.num_tracks, c.limit.bytes_per_sec), (400, 2.5e8));
        let fields = c.limit.field_limits();
        assert_eq!(
            (fields.max_metadata_size, fields.max_attributes_size),
            (1024, 64 * 1024),
            "an unset limit keeps LiveKit's default"
        );
        assert_eq!(c.key_file.as_deref(), Some("/etc/keys.yaml"));
        assert!(!c.room.auto_create);
        assert_eq!(
            (
                c.room.empty_timeout,
                c.room.departure_timeout,
                c.room.max_participants
            ),
            (60, 5, 12)
        );
        assert_eq!(c.webhook.urls.len(), 2);
        assert_eq!(c.logging.level, "warn");
        assert!(c.logging.json);
        assert_eq!(c.prometheus.port, 6789);
        assert_eq!(c.region, "eu-west");
        // Secrets are redacted in the printable form.
        let d = format!("{c:?} {:?} {:?}", c.redis, c.prometheus);
        for secret in ["secret1", "12345", "\"p\"", "\"mp\""] {
            assert!(!d.contains(secret), "{secret} leaked in {d}");
        }
        let j = c.redacted_json().to_string();
        for secret in ["secret1", "12345", "\"p\"", "\"mp\""] {
            assert!(!j.contains(secret), "{secret} leaked in {j}");
        }
    }

    #[test]
    fn unknown_keys_are_warnings_with_paths() {
        let c =
            yaml("port: 7881\nrtc:\n  udpport: 9\n  tcp_port: 1\nturn:\n  enabled: true\nfoo: 1\n")
                .unwrap();
        assert_eq!(c.port, 7881);
        assert_eq!(c.rtc.tcp_port, 1);
        let w = c.warnings.join("\n");
        assert!(w.contains("`rtc.udpport`"), "{w}");
        assert!(w.contains("`turn`"), "{w}");
        assert!(w.contains("`foo`"), "{w}");
    }

    #[test]
    fn udp_port_is_a_port_or_a_range() {
        let c = yaml("keys: {a: b}\nrtc:\n  udp_port: \"7882-7885\"\n").unwrap();
        let ports = c.rtc.udp_port.unwrap();
        assert_eq!((ports.first, ports.last, ports.count()), (7882, 7885, 4));
        assert_eq!(ports.ports().collect::<Vec<_>>(), [7882, 7883, 7884, 7885]);
        // Written back as read: a number for one port, a string for a range.
        let json = serde_json::to_value(c.rtc).unwrap();
        assert_eq!(json["udp_port"], "7882-7885");
        let one = serde_json::to_value(UdpPorts::single(7882)).unwrap();
        assert_eq!(one, 7882);
        assert_eq!("7882".parse::<UdpPorts>(), Ok(UdpPorts::single(7882)));
        // Unquoted, as LiveKit's sample config writes it (YAML reads a string).
        let c = yaml("keys: {a: b}\nrtc:\n  udp_port: 7882-7883\n").unwrap();
        assert_eq!(c.rtc.udp_port.map(|p| p.count()), Some(2));
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("port: abc", "port"),
            ("port: 70000", "port"),
            ("port: -1", "port"),
            ("rtc:\n  udp_port: 70000", "rtc.udp_port"),
            ("rtc:\n  udp_port: 0", "rtc.udp_port"),
            ("rtc:\n  udp_port: \"7890-7880\"", "rtc.udp_port"),
            ("rtc:\n  udp_port: \"7880-\"", "rtc.udp_port"),
            ("rtc:\n  udp_port: \"7000-7300\"", "rtc.udp_port"),
            ("rtc:\n  use_external_ip: maybe", "rtc.use_external_ip"),
            ("rtc:\n  node_ip: not-an-ip", "rtc.node_ip"),
            ("rtc:\n  tcp_only: true\n  tcp_port: 0", "rtc.tcp_only"),
            (
                "rtc:\n  port_range_start: 6000\n  port_range_end: 5000",
                "rtc.port_range_start",
            ),
            ("room:\n  empty_timeout: -5", "room.empty_timeout"),
            ("bind_addresses: [\"nope\"]", "bind_addresses[0]"),
            ("bind_addresses: 5", "bind_addresses"),
            ("logging:\n  level: loud", "logging.level"),
            ("logging:\n  level: \"info,relais=loud\"", "logging.level"),
            (
                "logging:\n  component_levels:\n    relais_media: loud",
                "logging.component_levels.relais_media",
            ),
            (
                "logging:\n  component_levels:\n    \"a b\": info",
                "logging.component_levels.a b",
            ),
            ("drain_timeout: -1", "drain_timeout"),
            ("limit:\n  bytes_per_sec: -1", "limit.bytes_per_sec"),
            (
                "limit:\n  shard_busy_fraction: 1.5",
                "limit.shard_busy_fraction",
            ),
            ("limit:\n  num_tracks: -3", "limit.num_tracks"),
            ("webhook:\n  urls: [http://x]", "webhook.api_key"),
            ("keys:\n  a: [1]", "keys"),
        ];
        for (text, key) in cases {
            match yaml(text) {
                Err(ConfigError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{text}: {message}");
                    let shown = ConfigError::Invalid { key: k, message }.to_string();
                    assert!(shown.contains(key), "{shown}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_yaml() {
        for text in ["port: [1, 2", "a: b: c", "\t- x\n:"] {
            assert!(
                matches!(yaml(text), Err(ConfigError::Yaml { .. })),
                "{text}: {:?}",
                yaml(text)
            );
        }
        let e = yaml("- 1\n- 2\n").unwrap_err();
        assert!(e.to_string().contains("map"), "{e}");
    }

    #[test]
    fn yaml_error_does_not_echo_secrets() {
        let e = yaml("keys:\n  k: supersecretvalue\n  bad: [unclosed\n").unwrap_err();
        assert!(!e.to_string().contains("supersecretvalue"), "{e}");
    }

    #[test]
    fn null_sections_are_defaults() {
        let c = yaml("rtc:\nroom:\n  empty_timeout:\n").unwrap();
        assert_eq!(c.rtc, RtcConfig::default());
        assert_eq!(c.room.empty_timeout, 300);
    }

    #[test]
    fn dev_mode_defaults() {
        let c = load(Cli {
            dev: true,
            ..Default::default()
        })
        .unwrap();
        assert!(c.development);
        assert_eq!(
            c.keys.get(DEV_API_KEY).map(String::as_str),
            Some(DEV_API_SECRET)
        );
        assert_eq!(c.bind_addresses[0], "127.0.0.1");
        assert!(c.bind_addresses.len() <= 2);
        assert_eq!(c.rtc.udp_port, Some(UdpPorts::single(DEV_UDP_PORT)));
        assert_eq!(c.logging.level, "debug");
        let keys = c.key_provider().unwrap();
        assert_eq!(keys.secret("devkey"), Some("secret"));

        // `development: true` in the file is the same as --dev.
        let c = load(body("development: true")).unwrap();
        assert_eq!(c.rtc.udp_port, Some(UdpPorts::single(DEV_UDP_PORT)));
    }

    #[test]
    fn dev_mode_keeps_explicit_settings() {
        let c = load(Cli {
            dev: true,
            bind: vec!["0.0.0.0".into()],
            config_body: Some(
                "keys: {mine: s}\nrtc: {udp_port: 9000}\nlogging: {level: error}\n".into(),
            ),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.bind_addresses, ["0.0.0.0"]);
        assert_eq!(c.rtc.udp_port, Some(UdpPorts::single(9000)));
        assert_eq!(c.logging.level, "error");
        assert!(!c.keys.contains_key(DEV_API_KEY));
        assert_eq!(c.keys["mine"], "s");
        // bind_addresses from the file also wins over the dev default.
        let c = load(Cli {
            dev: true,
            config_body: Some("bind_addresses: [10.0.0.1]".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.bind_addresses, ["10.0.0.1"]);
    }

    #[test]
    fn flags_override_file() {
        let c = load(Cli {
            config_body: Some(
                "port: 1000\nkeys: {a: b}\nrtc: {udp_port: 1, node_ip: 1.1.1.1}\nredis: {address: r:1}\n"
                    .into(),
            ),
            port: Some(2000),
            udp_port: Some(UdpPorts::single(3000)),
            node_ip: Some("2.2.2.2".into()),
            redis_host: Some("other:6379".into()),
            redis_password: Some("pw".into()),
            keys: Some("k1: s1\nk2: s2".into()),
            bind: vec!["127.0.0.2".into()],
            region: Some("r1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.port, 2000);
        assert_eq!(c.rtc.udp_port, Some(UdpPorts::single(3000)));
        assert_eq!(c.rtc.node_ip.as_deref(), Some("2.2.2.2"));
        assert_eq!(c.redis.address, "other:6379");
        assert_eq!(c.redis.password, "pw");
        assert_eq!(c.bind_addresses, ["127.0.0.2"]);
        assert_eq!(c.region, "r1");
        // --keys replaces the file's keys.
        assert_eq!(c.keys.keys().collect::<Vec<_>>(), ["k1", "k2"]);
        assert!(!c.development);
    }

    #[test]
    fn config_file_and_body_precedence() {
        let dir = std::env::temp_dir().join(format!("relais-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "port: 1111\nkeys: {a: b}\n").unwrap();
        let from_file = load(Cli {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_file.port, 1111);
        let from_body = load(Cli {
            config: Some(path.clone()),
            config_body: Some("port: 2222".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_body.port, 2222);
        assert!(!from_body.warnings.is_empty());
        let missing = load(Cli {
            config: Some(dir.join("missing.yaml")),
            ..Default::default()
        });
        assert!(matches!(missing, Err(ConfigError::Io { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keys_and_key_file() {
        assert!(matches!(
            Config::default().key_provider(),
            Err(ConfigError::NoKeys)
        ));
        let e = Config::default().key_provider().unwrap_err().to_string();
        assert!(e.contains("--dev") && e.contains("LIVEKIT_KEYS"), "{e}");

        let c = load(body("keys:\n  a: \"\"\n")).unwrap();
        assert!(matches!(c.key_provider(), Err(ConfigError::Keys { .. })));
        let c = load(body("keys:\n  a:\n")).unwrap();
        assert!(matches!(c.key_provider(), Err(ConfigError::Keys { .. })));

        let bad_env = load(Cli {
            keys: Some("nocolon".into()),
            ..Default::default()
        });
        assert!(matches!(bad_env, Err(ConfigError::Keys { .. })));

        let dir = std::env::temp_dir().join(format!("relais-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kf = dir.join("keys.yaml");
        std::fs::write(&kf, "fromfile: s3\n").unwrap();
        let c = load(Cli {
            keys: Some("a: b".into()),
            key_file: Some(kf.clone()),
            ..Default::default()
        })
        .unwrap();
        let k = c.key_provider().unwrap();
        assert_eq!(k.secret("a"), Some("b"));
        assert_eq!(k.secret("fromfile"), Some("s3"));
        // Dev mode does not add devkey when a key file is given.
        let c = load(Cli {
            dev: true,
            key_file: Some(kf.clone()),
            ..Default::default()
        })
        .unwrap();
        let k = c.key_provider().unwrap();
        assert_eq!(k.api_keys().collect::<Vec<_>>(), ["fromfile"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn webhook_key_must_exist() {
        let c = load(body(
            "keys: {a: b}\nwebhook: {api_key: zzz, urls: [http://x]}\n",
        ))
        .unwrap();
        match c.key_provider() {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "webhook.api_key"),
            other => panic!("{other:?}"),
        }
        let c = load(body(
            "keys: {a: b}\nwebhook: {api_key: a, urls: [http://x]}\n",
        ))
        .unwrap();
        assert!(c.key_provider().is_ok());
    }

    #[test]
    fn legacy_prometheus_port() {
        let c = yaml("prometheus_port: 6789\n").unwrap();
        assert_eq!(c.prometheus.port, 6789);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn logging_directives_and_components() {
        let c = yaml(
            "logging:\n  level: \"info,str0m=warn\"\n  component_levels:\n    relais_media::room: debug\n    relais_server: WARN\n",
        )
        .unwrap();
        assert_eq!(
            c.logging.filter_directives(),
            "info,str0m=warn,relais_media::room=debug,relais_server=warn"
        );
        assert_eq!(LoggingConfig::default().filter_directives(), "info");
        assert_eq!(c.drain_timeout, 30);
        let c = yaml("drain_timeout: 5\n").unwrap();
        assert_eq!(c.drain_timeout, 5);
    }
}
