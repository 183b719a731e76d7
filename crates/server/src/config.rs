//! Broker configuration: listeners, limits, users and vhosts, read from `warren.toml`,
//! `WARREN_*` environment variables and command-line flags (in increasing precedence).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth;
use crate::memory::MemoryLimit;

/// Everything the broker needs to start. `Config::default()` is a broker on 127.0.0.1:5672
/// with guest/guest on vhost `/`, which is what `warren` with no arguments runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on; port 0 picks a free port (the bound address is printed).
    pub listeners: Vec<SocketAddr>,
    /// Where durable data lives (unused with `ephemeral`).
    pub data_dir: PathBuf,
    /// Keep nothing on disk: every queue lives in memory only.
    pub ephemeral: bool,
    /// A `tracing` filter directive such as `info` or `warren_server=debug`.
    pub log_level: String,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// What `connection.start` tells clients about the server.
    pub identity: Identity,
    /// Users allowed to log in.
    pub users: Vec<User>,
    /// Virtual hosts that exist at start-up.
    pub vhosts: Vec<String>,
    /// Users that may only log in from a loopback address (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// Tests only: open the store on this backend (e.g. a `warren_store::MemBackend` that can
    /// fail writes as a full disk does) instead of files in `data_dir`, which is then only
    /// measured for free space. `None` (the default, and the only value the binary uses) is the
    /// real data folder.
    pub store_backend: Option<std::sync::Arc<dyn warren_store::Backend>>,
}

/// Limits negotiated with clients or enforced on them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame proposed in `connection.tune` (RabbitMQ: 131072).
    pub frame_max: u32,
    /// Highest channel number proposed in `connection.tune` (RabbitMQ: 2047).
    pub channel_max: u16,
    /// Heartbeat interval proposed in `connection.tune`, in seconds (RabbitMQ: 60; 0 = off).
    pub heartbeat: u16,
    /// Largest message body accepted; larger declared sizes close the channel with 406.
    /// 128 MiB, RabbitMQ 3.x's default (4.x lowered it to 16 MiB).
    pub max_message_size: u64,
    /// The memory budget for messages (RabbitMQ's `vm_memory_high_watermark`): a fraction of
    /// the RAM (default 0.4) or bytes. Above it publishers are blocked (the memory alarm).
    pub memory_high_watermark: MemoryLimit,
    /// Above this fraction of the budget, bodies of long queues are paged out to disk
    /// (RabbitMQ's `vm_memory_high_watermark_paging_ratio`, 0.5).
    pub memory_paging_ratio: f64,
    /// Free bytes on the data folder's file system below which publishers are blocked
    /// (RabbitMQ's `disk_free_limit`, 50 MB by default; 0 disables the check).
    pub disk_free_limit: u64,
    /// Time a client has to finish the handshake (start-ok, tune-ok, open).
    pub handshake_timeout: Duration,
    /// Connections accepted at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections from one address still in the handshake at once; more are closed at
    /// once (a slowloris guard; RabbitMQ has none, 0 disables it).
    pub max_unauthenticated_per_ip: usize,
    /// Connections from all addresses still in the handshake at once; more are closed at once
    /// (the same guard against many addresses; 0 disables it).
    pub max_unauthenticated: usize,
    /// How long a refused login waits before its answer (the 403 close, or the plain close
    /// for clients without `authentication_failure_close`), holding its unauthenticated slot
    /// meanwhile, so guessing passwords is slow. RabbitMQ 3.10 waits 3 s before closing.
    pub auth_failure_delay: Duration,
    /// A channel holding a delivery unacknowledged for longer is closed with 406
    /// (RabbitMQ's `consumer_timeout`, 30 minutes); `None` disables it.
    pub consumer_timeout: Option<Duration>,
}

/// The identity the server announces in `connection.start`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `product` server property.
    pub product: String,
    /// `version` server property.
    pub version: String,
    /// `cluster_name` server property.
    pub cluster_name: String,
}

/// A user: a name, a RabbitMQ-format password hash, and the vhosts it may use.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// base64(salt(4) ++ sha256(salt ++ password)), as `rabbit_password_hashing_sha256` stores it.
    pub password_hash: String,
    /// Vhosts this user may open; empty means all.
    pub vhosts: Vec<String>,
}

/// 128 MiB: RabbitMQ 3.x's `max_message_size` default.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;
/// RabbitMQ's hard cap on `max_message_size`: beyond it a declared body is a frame error.
pub const HARD_MAX_MESSAGE_SIZE: u64 = 512 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            memory_high_watermark: MemoryLimit::default(),
            memory_paging_ratio: 0.5,
            disk_free_limit: crate::disk::DEFAULT_DISK_FREE_LIMIT,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 65_536,
            consumer_timeout: Some(Duration::from_secs(30 * 60)),
            max_unauthenticated_per_ip: 4096,
            max_unauthenticated: 16_384,
            auth_failure_delay: Duration::from_secs(3),
        }
    }
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            product: "Warren".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            cluster_name: "warren".to_owned(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![SocketAddr::from(([127, 0, 0, 1], 5672))],
            data_dir: PathBuf::from("./warren-data"),
            ephemeral: false,
            log_level: "info".to_owned(),
            limits: Limits::default(),
            identity: Identity::default(),
            users: vec![User {
                name: "guest".to_owned(),
                password_hash: auth::hash_password("guest"),
                vhosts: Vec::new(),
            }],
            vhosts: vec!["/".to_owned()],
            loopback_users: vec!["guest".to_owned()],
            store_backend: None,
        }
    }
}

impl Config {
    /// A configuration for tests: one listener on 127.0.0.1:0, in memory, default users.
    pub fn for_tests() -> Self {
        Config {
            listeners: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ephemeral: true,
            ..Config::default()
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("configuration: {0}")]
    Source(#[from] config::ConfigError),
    /// A value parsed but makes no sense.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The shape of `warren.toml` and of `WARREN_*` variables (`WARREN_LIMITS__FRAME_MAX`, ...).
/// Every field is optional: what is absent keeps its default. Unknown top-level keys are
/// ignored, because unrelated `WARREN_*` variables may be set in the environment.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    listen: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    ephemeral: Option<bool>,
    log_level: Option<String>,
    product: Option<String>,
    version: Option<String>,
    cluster_name: Option<String>,
    limits: Option<FileLimits>,
    users: Option<Vec<FileUser>>,
    vhosts: Option<Vec<String>>,
    loopback_users: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    frame_max: Option<u32>,
    channel_max: Option<u16>,
    heartbeat: Option<u16>,
    max_message_size: Option<u64>,
    memory_high_watermark: Option<FileMemoryLimit>,
    memory_paging_ratio: Option<f64>,
    disk_free_limit: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    consumer_timeout_ms: Option<u64>,
    max_unauthenticated_per_ip: Option<usize>,
    max_unauthenticated: Option<usize>,
    auth_failure_delay_ms: Option<u64>,
}

/// `memory_high_watermark` as written: bytes (an integer), a fraction (a float), or text
/// (`"40%"`, `"2GiB"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileMemoryLimit {
    Bytes(u64),
    Fraction(f64),
    Text(String),
}

impl FileMemoryLimit {
    fn resolve(self) -> Result<MemoryLimit, ConfigError> {
        match self {
            FileMemoryLimit::Bytes(bytes) => Ok(MemoryLimit::Absolute(bytes)),
            FileMemoryLimit::Fraction(fraction) => {
                MemoryLimit::relative(fraction).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "memory_high_watermark {fraction}: a fraction of the RAM must be in (0, 1]"
                    ))
                })
            }
            FileMemoryLimit::Text(text) => MemoryLimit::parse(&text).map_err(ConfigError::Invalid),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    /// A RabbitMQ-format hash (as `rabbitmqctl hash_password` prints it).
    password_hash: Option<String>,
    /// A clear-text password, hashed at load time (convenient for tests, not for production).
    password: Option<String>,
    #[serde(default)]
    vhosts: Vec<String>,
}

/// Overrides from the command line, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--listen ADDR`, repeatable.
    pub listen: Vec<String>,
    /// `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--ephemeral`.
    pub ephemeral: bool,
    /// `--log-level LEVEL`.
    pub log_level: Option<String>,
    /// `--memory-high-watermark LIMIT` (`0.4`, `40%`, `2GiB`, bytes).
    pub memory_high_watermark: Option<String>,
}

/// Loads defaults, then the file (if any), then `WARREN_*` variables, then `overrides`.
pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = &overrides.config_file {
        builder = builder.add_source(config::File::from(path.as_path()).required(true));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("WARREN")
            .prefix_separator("_")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("listen")
            .with_list_parse_key("vhosts")
            .with_list_parse_key("loopback_users")
            .try_parsing(true),
    );
    let file: FileConfig = builder.build()?.try_deserialize()?;
    let mut cfg = apply_file(Config::default(), file)?;
    if !overrides.listen.is_empty() {
        cfg.listeners = parse_listeners(&overrides.listen)?;
    }
    if let Some(dir) = &overrides.data_dir {
        cfg.data_dir = dir.clone();
    }
    if overrides.ephemeral {
        cfg.ephemeral = true;
    }
    if let Some(level) = &overrides.log_level {
        cfg.log_level = level.clone();
    }
    if let Some(limit) = &overrides.memory_high_watermark {
        cfg.limits.memory_high_watermark =
            MemoryLimit::parse(limit).map_err(ConfigError::Invalid)?;
    }
    validate(&cfg)?;
    Ok(cfg)
}

/// Loads only a file (no environment, no flags); used by tests of the example config.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let file: FileConfig = config::Config::builder()
        .add_source(config::File::from(path).required(true))
        .build()?
        .try_deserialize()?;
    let cfg = apply_file(Config::default(), file)?;
    validate(&cfg)?;
    Ok(cfg)
}

fn apply_file(mut cfg: Config, file: FileConfig) -> Result<Config, ConfigError> {
    if let Some(listen) = file.listen {
        cfg.listeners = parse_listeners(&listen)?;
    }
    if let Some(dir) = file.data_dir {
        cfg.data_dir = dir;
    }
    if let Some(ephemeral) = file.ephemeral {
        cfg.ephemeral = ephemeral;
    }
    if let Some(level) = file.log_level {
        cfg.log_level = level;
    }
    if let Some(product) = file.product {
        cfg.identity.product = product;
    }
    if let Some(version) = file.version {
        cfg.identity.version = version;
    }
    if let Some(cluster_name) = file.cluster_name {
        cfg.identity.cluster_name = cluster_name;
    }
    if let Some(limits) = file.limits {
        let l = &mut cfg.limits;
        if let Some(v) = limits.frame_max {
            l.frame_max = v;
        }
        if let Some(v) = limits.channel_max {
            l.channel_max = v;
        }
        if let Some(v) = limits.heartbeat {
            l.heartbeat = v;
        }
        if let Some(v) = limits.max_message_size {
            l.max_message_size = v;
        }
        if let Some(v) = limits.memory_high_watermark {
            l.memory_high_watermark = v.resolve()?;
        }
        if let Some(v) = limits.memory_paging_ratio {
            l.memory_paging_ratio = v;
        }
        if let Some(v) = limits.disk_free_limit {
            l.disk_free_limit = v;
        }
        if let Some(v) = limits.handshake_timeout_ms {
            l.handshake_timeout = Duration::from_millis(v);
        }
        if let Some(v) = limits.max_connections {
            l.max_connections = v;
        }
        if let Some(v) = limits.max_unauthenticated_per_ip {
            l.max_unauthenticated_per_ip = v;
        }
        if let Some(v) = limits.max_unauthenticated {
            l.max_unauthenticated = v;
        }
        if let Some(v) = limits.auth_failure_delay_ms {
            l.auth_failure_delay = Duration::from_millis(v);
        }
        if let Some(v) = limits.consumer_timeout_ms {
            l.consumer_timeout = (v > 0).then(|| Duration::from_millis(v));
        }
    }
    if let Some(users) = file.users {
        cfg.users = users
            .into_iter()
            .map(|u| {
                let password_hash = match (u.password_hash, u.password) {
                    (Some(hash), None) => hash,
                    (None, Some(password)) => auth::hash_password(&password),
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "user {:?}: give exactly one of password_hash and password",
                            u.name
                        )));
                    }
                };
                Ok(User {
                    name: u.name,
                    password_hash,
                    vhosts: u.vhosts,
                })
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(vhosts) = file.vhosts {
        cfg.vhosts = vhosts;
    }
    if let Some(loopback_users) = file.loopback_users {
        cfg.loopback_users = loopback_users;
    }
    Ok(cfg)
}

/// Parses listener addresses: `127.0.0.1:5672`, `[::1]:0`, or a bare port (loopback).
pub fn parse_listeners(items: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    items
        .iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            if let Ok(port) = item.parse::<u16>() {
                return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
            }
            item.parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid(format!("listener {item:?}: {e}")))
        })
        .collect()
}

fn validate(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.listeners.is_empty() {
        return Err(ConfigError::Invalid("no listener".into()));
    }
    let l = &cfg.limits;
    if l.frame_max != 0 && l.frame_max < 4096 {
        return Err(ConfigError::Invalid(format!(
            "frame_max {} is below the protocol minimum 4096",
            l.frame_max
        )));
    }
    if !(l.memory_paging_ratio > 0.0 && l.memory_paging_ratio <= 1.0) {
        return Err(ConfigError::Invalid(format!(
            "memory_paging_ratio {} must be in (0, 1]",
            l.memory_paging_ratio
        )));
    }
    if l.max_message_size > HARD_MAX_MESSAGE_SIZE {
        return Err(ConfigError::Invalid(format!(
            "max_message_size {} is above the hard cap {HARD_MAX_MESSAGE_SIZE}",
            l.max_message_size
        )));
    }
    for user in &cfg.users {
        auth::decode_hash(&user.password_hash).ok_or_else(|| {
            ConfigError::Invalid(format!("user {:?}: malformed password_hash", user.name))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_accept_ipv6_bare_ports_and_lists() {
        let parsed = parse_listeners(&[
            "[::1]:0".into(),
            "5673".into(),
            "127.0.0.2:1,127.0.0.3:2".into(),
        ])
        .unwrap();
        assert_eq!(parsed.len(), 4);
        assert!(parsed[0].is_ipv6());
        assert_eq!(parsed[1], "127.0.0.1:5673".parse().unwrap());
        assert_eq!(parsed[3], "127.0.0.3:2".parse().unwrap());
        assert!(parse_listeners(&["nonsense".into()]).is_err());
    }

    #[test]
    fn example_config_at_repository_root_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../warren.toml");
        let cfg = load_file(&path).unwrap();
        assert_eq!(cfg.limits.frame_max, 131_072);
        assert_eq!(cfg.limits.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(
            cfg.limits.disk_free_limit,
            crate::disk::DEFAULT_DISK_FREE_LIMIT
        );
        assert!(cfg.users.iter().any(|u| u.name == "guest"));
        assert!(cfg.vhosts.iter().any(|v| v == "/"));
    }

    #[test]
    fn memory_limits_load_from_files_in_every_form() {
        let dir = tempfile::tempdir().unwrap();
        let load = |limits: &str| {
            let path = dir.path().join("warren.toml");
            std::fs::write(&path, format!("[limits]\n{limits}\n")).unwrap();
            load_file(&path).map(|cfg| {
                (
                    cfg.limits.memory_high_watermark,
                    cfg.limits.memory_paging_ratio,
                )
            })
        };
        assert_eq!(
            load("memory_high_watermark = 0.25").unwrap(),
            (MemoryLimit::Relative(0.25), 0.5)
        );
        assert_eq!(
            load("memory_high_watermark = 1073741824\nmemory_paging_ratio = 0.75").unwrap(),
            (MemoryLimit::Absolute(1 << 30), 0.75)
        );
        assert_eq!(
            load("memory_high_watermark = \"2GiB\"").unwrap().0,
            MemoryLimit::Absolute(2 << 30)
        );
        assert_eq!(
            load("memory_high_watermark = \"60%\"").unwrap().0,
            MemoryLimit::Relative(0.6)
        );
        assert!(load("memory_high_watermark = 1.5").is_err());
        assert!(load("memory_high_watermark = \"lots\"").is_err());
        assert!(load("memory_paging_ratio = 0.0").is_err());
        assert_eq!(
            Config::default().limits.memory_high_watermark,
            MemoryLimit::Relative(0.4)
        );
    }

    #[test]
    fn frame_max_below_minimum_is_refused() {
        let mut cfg = Config::default();
        cfg.limits.frame_max = 100;
        assert!(validate(&cfg).is_err());
    }
}
