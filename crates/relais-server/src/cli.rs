//! Command line of the `relais` binary.
//!
//! Global flags mirror `livekit-server`'s (each with its environment variable):
//! `--dev`, `--config` (`LIVEKIT_CONFIG_FILE`), `--config-body` (`LIVEKIT_CONFIG`,
//! the YAML *content*), `--keys` (`LIVEKIT_KEYS`), `--key-file`
//! (`LIVEKIT_KEY_FILE`), `--bind` (`LIVEKIT_BIND`), `--port`, `--udp-port`
//! (`UDP_PORT`), `--node-ip` (`NODE_IP`), `--redis-host` (`REDIS_HOST`),
//! `--redis-password` (`REDIS_PASSWORD`), `--region` (`LIVEKIT_REGION`).
//!
//! Without a subcommand the server runs. The tool subcommands
//! (`generate-keys`, `create-token`, `verify-token`, `check-config`) are
//! implemented here; [`run_tool`] executes them so that `main` only has to
//! handle the run case.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relais_auth::{generate_api_key, generate_api_secret, AccessToken, TokenVerifier, VideoGrant};
use serde_json::json;
use thiserror::Error;
use tracing::Dispatch;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{Config, ConfigError, LoggingConfig, UdpPorts};

/// Exit code for configuration and usage errors.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for a token that fails verification (`verify-token`).
pub const EXIT_INVALID_TOKEN: u8 = 1;

/// `relais`: a LiveKit-compatible SFU. `Debug` hides keys, passwords and the
/// config body.
#[derive(Clone, Default, Parser)]
#[command(
    name = "relais",
    version,
    about = "Relais: a LiveKit-compatible media server (SFU)"
)]
pub struct Cli {
    /// Development mode: keys devkey/secret unless configured, bind to
    /// localhost, UDP port 7882, debug logging.
    #[arg(long, global = true)]
    pub dev: bool,

    /// Path of the YAML config file.
    #[arg(long, global = true, value_name = "PATH", env = "LIVEKIT_CONFIG_FILE")]
    pub config: Option<PathBuf>,

    /// YAML config content (takes precedence over --config).
    #[arg(
        long,
        global = true,
        value_name = "YAML",
        env = "LIVEKIT_CONFIG",
        hide_env_values = true
    )]
    pub config_body: Option<String>,

    /// API keys, `key: secret` pairs separated by commas or newlines
    /// (replaces `keys` from the config file).
    #[arg(
        long,
        global = true,
        value_name = "KEYS",
        env = "LIVEKIT_KEYS",
        hide_env_values = true
    )]
    pub keys: Option<String>,

    /// Path of a YAML file of `key: secret` lines.
    #[arg(long, global = true, value_name = "PATH", env = "LIVEKIT_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// IP address to listen on (repeatable, or comma separated).
    #[arg(
        long,
        global = true,
        value_name = "IP",
        env = "LIVEKIT_BIND",
        value_delimiter = ','
    )]
    pub bind: Vec<String>,

    /// Main HTTP/WebSocket port (default 7880).
    #[arg(long, global = true, value_name = "PORT")]
    pub port: Option<u16>,

    /// UDP port for WebRTC media, or a range with one shard per port, e.g.
    /// 7882-7889 (rtc.udp_port).
    #[arg(long, global = true, value_name = "PORT[-PORT]", env = "UDP_PORT")]
    pub udp_port: Option<UdpPorts>,

    /// IP address advertised to clients (rtc.node_ip).
    #[arg(long, global = true, value_name = "IP", env = "NODE_IP")]
    pub node_ip: Option<String>,

    /// Redis `host:port` (enables multi-node mode).
    #[arg(long, global = true, value_name = "HOST:PORT", env = "REDIS_HOST")]
    pub redis_host: Option<String>,

    /// Redis password.
    #[arg(
        long,
        global = true,
        value_name = "PASSWORD",
        env = "REDIS_PASSWORD",
        hide_env_values = true
    )]
    pub redis_password: Option<String>,

    /// Region of this node.
    #[arg(long, global = true, value_name = "REGION", env = "LIVEKIT_REGION")]
    pub region: Option<String>,

    /// What to do; without a subcommand the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("Cli")
            .field("dev", &self.dev)
            .field("config", &self.config)
            .field("config_body", &hidden(&self.config_body))
            .field("keys", &hidden(&self.keys))
            .field("key_file", &self.key_file)
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("udp_port", &self.udp_port)
            .field("node_ip", &self.node_ip)
            .field("redis_host", &self.redis_host)
            .field("redis_password", &hidden(&self.redis_password))
            .field("region", &self.region)
            .field("command", &self.command)
            .finish()
    }
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a new random API key and secret.
    GenerateKeys,
    /// Print an access token (JWT) signed with a configured key.
    CreateToken(Box<CreateTokenArgs>),
    /// Verify a token with the configured keys and print its claims as JSON.
    #[command(hide = true)]
    VerifyToken(VerifyTokenArgs),
    /// Load the configuration, print the effective settings as JSON (secrets
    /// redacted) and exit.
    CheckConfig,
}

/// Arguments of `create-token`. `Debug` hides the secret.
#[derive(Clone, Default, Args)]
pub struct CreateTokenArgs {
    /// Room name (required for the `join` grant).
    #[arg(long)]
    pub room: Option<String>,
    /// Participant identity (required for the `join` grant).
    #[arg(long)]
    pub identity: Option<String>,
    /// Participant display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Participant metadata.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Participant attribute `key=value` (repeatable).
    #[arg(long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// Participant kind (standard, agent, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Comma-separated grants: join, publish, subscribe, data, admin, list,
    /// create, record, hidden, recorder, agent, ingress, update-metadata,
    /// metrics, agent-session. Default: join. When any of publish/subscribe/data
    /// is listed, the ones not listed are denied (data follows publish).
    #[arg(long, value_delimiter = ',', default_value = "join")]
    pub grants: Vec<String>,
    /// Comma-separated track sources allowed (camera, microphone,
    /// screen_share, screen_share_audio).
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Lifetime, e.g. 6h, 30m, 1h30m, 90s, 2d (default 6h).
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub valid_for: Duration,
    /// API key to sign with (default: the only configured key).
    #[arg(long)]
    pub api_key: Option<String>,
    /// API secret (default: the configured secret of --api-key).
    #[arg(long)]
    pub api_secret: Option<String>,
}

impl std::fmt::Debug for CreateTokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateTokenArgs")
            .field("room", &self.room)
            .field("identity", &self.identity)
            .field("grants", &self.grants)
            .field("valid_for", &self.valid_for)
            .field("api_key", &self.api_key)
            .field("api_secret", &self.api_secret.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// Arguments of `verify-token`.
#[derive(Debug, Clone, Args)]
pub struct VerifyTokenArgs {
    /// The JWT.
    pub token: String,
}

/// Errors of the tool subcommands.
#[derive(Debug, Error)]
pub enum CliError {
    /// Configuration error (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad arguments (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Token verification or signing failed (exit code 1).
    #[error(transparent)]
    Auth(#[from] relais_auth::AuthError),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Auth(_) => EXIT_INVALID_TOKEN,
            _ => EXIT_CONFIG,
        }
    }
}

/// Parses a Go-like duration: `6h`, `30m`, `1h30m`, `90s`, `2d`, `500ms`, or a
/// bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} has a number without a unit"))?;
        if digits == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {s:?} (use ms, s, m, h, d)"
                ))
            }
        };
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// Output of `generate-keys`: `API Key: API…` and `API Secret: …` lines.
pub fn generate_keys_output() -> String {
    format!(
        "API Key: {}\nAPI Secret: {}\n",
        generate_api_key(),
        generate_api_secret()
    )
}

/// Builds the video grant for `create-token` from `--grants`, `--room` and `--sources`.
pub fn grant_from_args(args: &CreateTokenArgs) -> Result<VideoGrant, CliError> {
    let mut g = VideoGrant {
        room: args.room.clone().unwrap_or_default(),
        ..VideoGrant::default()
    };
    let mut publish = None;
    let mut subscribe = None;
    let mut data = None;
    for raw in &args.grants {
        let name = raw.trim().to_ascii_lowercase();
        match name.as_str() {
            "" => {}
            "join" | "roomjoin" => g.room_join = Some(true),
            "publish" | "canpublish" => publish = Some(true),
            "subscribe" | "cansubscribe" => subscribe = Some(true),
            "data" | "publish-data" | "canpublishdata" => data = Some(true),
            "admin" | "roomadmin" => g.room_admin = Some(true),
            "list" | "roomlist" => g.room_list = Some(true),
            "create" | "roomcreate" => g.room_create = Some(true),
            "record" | "roomrecord" => g.room_record = Some(true),
            "hidden" => g.hidden = Some(true),
            "recorder" => g.recorder = Some(true),
            "agent" => g.agent = Some(true),
            "ingress" | "ingressadmin" => g.ingress_admin = Some(true),
            "update-metadata" | "metadata" | "canupdateownmetadata" => {
                g.can_update_own_metadata = Some(true)
            }
            "metrics" | "cansubscribemetrics" => g.can_subscribe_metrics = Some(true),
            "agent-session" | "canmanageagentsession" => g.can_manage_agent_session = Some(true),
            other => {
                return Err(CliError::Usage(format!(
                    "unknown grant {other:?} (known: join, publish, subscribe, data, admin, \
                     list, create, record, hidden, recorder, agent, ingress, update-metadata, \
                     metrics, agent-session)"
                )))
            }
        }
    }
    if publish.is_some() || subscribe.is_some() || data.is_some() {
        let p = publish.unwrap_or(false);
        g.can_publish = Some(p);
        g.can_subscribe = Some(subscribe.unwrap_or(false));
        g.can_publish_data = Some(data.unwrap_or(p));
    }
    let sources: Vec<String> = args
        .sources
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &sources {
        if !["camera", "microphone", "screen_share", "screen_share_audio"].contains(&s.as_str()) {
            return Err(CliError::Usage(format!(
                "unknown track source {s:?} (camera, microphone, screen_share, screen_share_audio)"
            )));
        }
    }
    if !sources.is_empty() {
        g.can_publish_sources = Some(sources);
    }
    if g.is_room_join() {
        if g.room.is_empty() {
            return Err(CliError::Usage("the join grant needs --room".into()));
        }
        if args.identity.as_deref().unwrap_or("").is_empty() {
            return Err(CliError::Usage("the join grant needs --identity".into()));
        }
    }
    Ok(g)
}

/// `create-token`: returns the signed JWT.
pub fn create_token(cli: &Cli, args: &CreateTokenArgs) -> Result<String, CliError> {
    let grant = grant_from_args(args)?;
    let (api_key, api_secret) = match (&args.api_key, &args.api_secret) {
        (Some(k), Some(s)) => (k.clone(), s.clone()),
        (key, None) => {
            let config = Config::load(cli)?;
            let keys = config.key_provider()?;
            match key {
                Some(k) => {
                    let s = keys.secret(k).ok_or_else(|| {
                        CliError::Usage(format!("API key {k:?} is not configured"))
                    })?;
                    (k.clone(), s.to_string())
                }
                None if keys.len() == 1 => {
                    let (k, s) = keys.first().expect("one key");
                    (k.to_string(), s.to_string())
                }
                None => {
                    return Err(CliError::Usage(format!(
                        "{} API keys are configured; choose one with --api-key",
                        keys.len()
                    )))
                }
            }
        }
        (None, Some(_)) => return Err(CliError::Usage("--api-secret needs --api-key".into())),
    };
    let mut attributes = BTreeMap::new();
    for a in &args.attributes {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--attribute {a:?} is not KEY=VALUE")))?;
        attributes.insert(k.to_string(), v.to_string());
    }
    let mut token = AccessToken::new(api_key, api_secret)
        .with_ttl(args.valid_for)
        .with_grant(grant);
    if let Some(id) = &args.identity {
        token = token.with_identity(id.clone());
    }
    if let Some(n) = &args.name {
        token = token.with_name(n.clone());
    }
    if let Some(m) = &args.metadata {
        token = token.with_metadata(m.clone());
    }
    if let Some(k) = &args.kind {
        token = token.with_kind(k.clone());
    }
    if !attributes.is_empty() {
        token = token.with_attributes(attributes);
    }
    Ok(token.to_jwt()?)
}

/// `verify-token`: verifies with the configured keys and returns pretty JSON
/// `{identity, apiKey, claims, permissions}` where `claims` is the payload as
/// decoded by Relais and `permissions` the effective video permissions.
pub fn verify_token(cli: &Cli, token: &str) -> Result<String, CliError> {
    let config = Config::load(cli)?;
    let verifier = TokenVerifier::new(config.key_provider()?);
    let claims = verifier.verify(token)?;
    let v = claims.video_or_default();
    let out = json!({
        "identity": claims.identity(),
        "apiKey": claims.api_key(),
        "claims": claims,
        "permissions": {
            "canPublish": v.can_publish(),
            "canSubscribe": v.can_subscribe(),
            "canPublishData": v.can_publish_data(),
            "canUpdateOwnMetadata": v.can_update_own_metadata(),
            "roomJoin": v.is_room_join(),
            "roomAdmin": v.is_room_admin(),
            "hidden": v.is_hidden(),
        },
    });
    Ok(serde_json::to_string_pretty(&out).unwrap_or_default())
}

/// `check-config`: the effective configuration as pretty JSON (secrets
/// redacted), with the configured API key names.
pub fn check_config(config: &Config) -> Result<String, CliError> {
    let keys = config.key_provider()?;
    let mut v = config.redacted_json();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "warnings".into(),
            serde_json::to_value(&config.warnings).unwrap_or_default(),
        );
        obj.insert(
            "api_keys".into(),
            serde_json::to_value(keys.api_keys().collect::<Vec<_>>()).unwrap_or_default(),
        );
    }
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}

/// Sets up a stderr `tracing` subscriber from the logging settings
/// ([`log_dispatch`], with `RUST_LOG` when set). Does nothing if a subscriber
/// is already installed.
pub fn init_logging(logging: &LoggingConfig) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let _ = log_dispatch(logging, rust_log.as_deref()).try_init();
}

/// The node's log subscriber: the filter is `logging.level` plus
/// `logging.component_levels` ([`LoggingConfig::filter_directives`]), or
/// `rust_log` when it is a valid filter. Human-readable lines on stderr by
/// default, one JSON object per line with `logging.json` (the
/// `room`/`participant` spans' fields under `spans`).
///
/// Targets and levels only are filtered statically ([`Targets`]). Span and
/// field filters (`[room{room=standup}]=debug`) need an [`EnvFilter`], which
/// takes a process-wide lock each time a span is entered or left — every
/// media packet enters its participant's span, so a node whose filter has
/// none of those does not pay for it (`cargo bench -p relais-bench --bench
/// logging`).
pub fn log_dispatch(logging: &LoggingConfig, rust_log: Option<&str>) -> Dispatch {
    let directives = rust_log
        .filter(|d| !d.trim().is_empty() && EnvFilter::builder().parse(d).is_ok())
        .map_or_else(|| logging.filter_directives(), str::to_string);
    match directives.parse::<Targets>() {
        Ok(targets) if !directives.contains('[') => log_lines(targets, logging.json),
        _ => log_lines(EnvFilter::new(&directives), logging.json),
    }
}

fn log_lines<F>(filter: F, json: bool) -> Dispatch
where
    F: Layer<Registry> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        Dispatch::new(registry.with(lines.json().with_current_span(true).with_span_list(true)))
    } else {
        Dispatch::new(registry.with(lines))
    }
}

fn fail(e: &CliError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code())
}

fn print(s: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", s.trim_end());
    ExitCode::SUCCESS
}

/// Runs a tool subcommand. Returns `None` when the server should run instead
/// (no subcommand); otherwise the exit code, after printing the result to
/// stdout or `error: <message>` to stderr.
pub fn run_tool(cli: &Cli) -> Option<ExitCode> {
    let command = cli.command.as_ref()?;
    let code = match command {
        Command::GenerateKeys => print(&generate_keys_output()),
        Command::CreateToken(args) => match create_token(cli, args) {
            Ok(t) => print(&t),
            Err(e) => fail(&e),
        },
        Command::VerifyToken(args) => match verify_token(cli, &args.token) {
            Ok(s) => print(&s),
            Err(e) => fail(&e),
        },
        Command::CheckConfig => match Config::load(cli) {
            Ok(config) => {
                init_logging(&LoggingConfig {
                    level: "warn".into(),
                    json: config.logging.json,
                    ..Default::default()
                });
                config.log_warnings();
                match check_config(&config) {
                    Ok(s) => print(&s),
                    Err(e) => fail(&e),
                }
            }
            Err(e) => fail(&CliError::Config(e)),
        },
    };
    Some(code)
}

/// Loads the configuration for the run case, printing `error: <msg>` and
/// returning exit code 2 on failure. Sets up logging and logs the load
/// warnings (unknown keys) on success.
pub fn load_for_run(cli: &Cli) -> Result<Config, ExitCode> {
    let config = Config::load(cli).map_err(|e| fail(&CliError::Config(e)))?;
    if let Err(e) = config.key_provider() {
        return Err(fail(&CliError::Config(e)));
    }
    init_logging(&config.logging);
    config.log_warnings();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(parse_duration("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("10").is_ok());
    }

    #[test]
    fn parses_flags_and_subcommands() {
        let cli = Cli::try_parse_from([
            "relais",
            "--dev",
            "--bind",
            "10.0.0.1",
            "--bind",
            "10.0.0.2,10.0.0.3",
            "--port",
            "9000",
            "create-token",
            "--room",
            "r",
            "--identity",
            "i",
            "--grants",
            "join,subscribe,admin",
            "--valid-for",
            "1h",
        ])
        .unwrap();
        assert!(cli.dev);
        assert_eq!(cli.bind, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(cli.port, Some(9000));
        let Some(Command::CreateToken(args)) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.valid_for, Duration::from_secs(3600));
        let g = grant_from_args(args).unwrap();
        assert_eq!(g.room, "r");
        assert_eq!(g.room_join, Some(true));
        assert_eq!(g.room_admin, Some(true));
        assert_eq!(
            (g.can_publish, g.can_subscribe, g.can_publish_data),
            (Some(false), Some(true), Some(false))
        );
        // Global flags also after the subcommand.
        let cli = Cli::try_parse_from(["relais", "check-config", "--dev"]).unwrap();
        assert!(cli.dev);
        assert!(Cli::try_parse_from(["relais", "--port", "70000"]).is_err());
    }

    #[test]
    fn default_grant_is_join_with_defaults() {
        let args = CreateTokenArgs {
            room: Some("r".into()),
            identity: Some("me".into()),
            grants: vec!["join".into()],
            ..Default::default()
        };
        let g = grant_from_args(&args).unwrap();
        assert_eq!(g, VideoGrant::join("r"));
        let no_room = CreateTokenArgs {
            room: None,
            ..args.clone()
        };
        assert!(matches!(grant_from_args(&no_room), Err(CliError::Usage(_))));
        let bad = CreateTokenArgs {
            grants: vec!["fly".into()],
            ..args.clone()
        };
        assert!(matches!(grant_from_args(&bad), Err(CliError::Usage(_))));
        let publish = CreateTokenArgs {
            grants: vec!["join".into(), "publish".into(), "subscribe".into()],
            sources: vec!["camera".into()],
            ..args
        };
        let g = grant_from_args(&publish).unwrap();
        assert_eq!(
            (g.can_publish, g.can_subscribe, g.can_publish_data),
            (Some(true), Some(true), Some(true))
        );
        assert_eq!(g.can_publish_sources, Some(vec!["camera".to_string()]));
    }

    #[test]
    fn create_and_verify_with_dev_keys() {
        let cli = Cli {
            dev: true,
            ..Default::default()
        };
        let args = CreateTokenArgs {
            room: Some("room".into()),
            identity: Some("alice".into()),
            name: Some("Alice".into()),
            attributes: vec!["a=b=c".into()],
            grants: vec!["join".into()],
            valid_for: Duration::from_secs(600),
            ..Default::default()
        };
        let jwt = create_token(&cli, &args).unwrap();
        let out: serde_json::Value =
            serde_json::from_str(&verify_token(&cli, &jwt).unwrap()).unwrap();
        assert_eq!(out["identity"], "alice");
        assert_eq!(out["apiKey"], "devkey");
        assert_eq!(out["claims"]["name"], "Alice");
        assert_eq!(out["claims"]["attributes"]["a"], "b=c");
        assert_eq!(out["claims"]["video"]["room"], "room");
        assert_eq!(out["permissions"]["canPublish"], true);

        // Explicit key and secret need no configuration; a token signed with
        // an unknown key fails verification with exit code 1.
        let args = CreateTokenArgs {
            api_key: Some("k".into()),
            api_secret: Some("s".into()),
            ..args
        };
        let jwt = create_token(&Cli::default(), &args).unwrap();
        let err = verify_token(&cli, &jwt).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_INVALID_TOKEN);
        assert!(err.to_string().contains("invalid API key"));

        // Without keys and without --dev: a configuration error.
        let err = verify_token(&Cli::default(), &jwt).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_CONFIG);
    }

    #[test]
    fn several_keys_need_api_key() {
        let cli = Cli {
            keys: Some("a: s1, b: s2".into()),
            ..Default::default()
        };
        let args = CreateTokenArgs {
            grants: vec!["list".into()],
            valid_for: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(matches!(create_token(&cli, &args), Err(CliError::Usage(_))));
        let args = CreateTokenArgs {
            api_key: Some("b".into()),
            ..args
        };
        let jwt = create_token(&cli, &args).unwrap();
        let out: serde_json::Value =
            serde_json::from_str(&verify_token(&cli, &jwt).unwrap()).unwrap();
        assert_eq!(out["apiKey"], "b");
        assert_eq!(out["claims"]["video"]["roomList"], true);
    }

    #[test]
    fn generate_keys_shape() {
        let out = generate_keys_output();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let key = lines[0].strip_prefix("API Key: ").unwrap();
        let secret = lines[1].strip_prefix("API Secret: ").unwrap();
        assert!(key.starts_with("API") && key.len() == 15);
        assert_eq!(secret.len(), 43);
    }
}
