//! Command-line options, named after RabbitMQ PerfTest's where there is an equivalent.

use clap::{Parser, ValueEnum};

use crate::topology::ExchangeType;
use crate::wire::{Arg, Table};

/// What kind of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Producers and consumers at once, for a time or a count.
    Run,
    /// Fill the queues with --backlog messages, then drain them.
    Backlog,
    /// Open --connections idle connections and measure the broker's memory per connection.
    Idle,
    /// Declare --queues queues (durable with --durable) from --producers connections at once,
    /// each waiting for every declare-ok, then delete them: declares per second.
    Declare,
}

/// PerfTest-style load generator for AMQP 0-9-1 brokers (Warren, RabbitMQ).
///
/// Prints a progress line per second on stderr and one line of JSON on stdout; exits 1 when any
/// message was lost, duplicated, reordered or refused, 2 on a setup error.
#[derive(Debug, Clone, Parser)]
#[command(name = "warren-loadgen", version)]
pub struct Args {
    /// Broker URI.
    #[arg(
        long,
        short = 'u',
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    #[arg(long, value_enum, default_value = "run")]
    pub mode: Mode,
    /// Producer connections.
    #[arg(long, short = 'x', default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections; consumer i reads queue i % queues.
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: usize,
    /// Queues, named PREFIX.q0, PREFIX.q1, ...
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Prefix of the queue and exchange names (default: loadgen.<pid>).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Message body size in bytes (at least 16: producer id, sequence, timestamp).
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Messages per second per producer; 0 = as fast as possible.
    #[arg(long, short = 'r', default_value_t = 0.0)]
    pub rate: f64,
    /// Publish with delivery-mode 2.
    #[arg(long)]
    pub persistent: bool,
    /// Declare the exchange and queues durable.
    #[arg(long)]
    pub durable: bool,
    /// Publisher confirms with this many messages in flight per producer; 0 = off.
    #[arg(long, short = 'c', default_value_t = 0)]
    pub confirm: u64,
    /// basic.qos prefetch count per consumer; 0 = unlimited.
    #[arg(long, short = 'q', default_value_t = 0)]
    pub prefetch: u16,
    /// Consume with no-ack.
    #[arg(long, short = 'a')]
    pub autoack: bool,
    /// Acknowledge with multiple=true once this many messages are unacknowledged.
    #[arg(long, default_value_t = 1)]
    pub multi_ack: u64,
    /// Exchange to publish to (declared unless empty); default: the default exchange, or
    /// PREFIX.x when --exchange-type is given.
    #[arg(long, short = 'e')]
    pub exchange: Option<String>,
    #[arg(long, short = 't', value_enum)]
    pub exchange_type: Option<ExchangeType>,
    /// Routing key for every producer (default: the name of queue p % queues).
    #[arg(long, short = 'k')]
    pub routing_key: Option<String>,
    /// Binding key for every queue (default: the queue's name; empty for fanout).
    #[arg(long)]
    pub binding_key: Option<String>,
    /// Per-message `expiration` property, as a cycle of milliseconds, `-` for none: with
    /// `-,1000,600000` messages 0, 3, 6, ... of each producer never expire, 1, 4, ... get
    /// 1000 ms, 2, 5, ... 600000 ms. In backlog mode, entries up to --settle (in ms) are expected
    /// to expire before the drain (they must not arrive, and are not counted lost); the others
    /// are expected to arrive, so make them far longer than the run.
    #[arg(long, value_name = "MS,MS,...", allow_hyphen_values = true)]
    pub expiration: Option<String>,
    /// Queue argument NAME=VALUE (integers and true/false are typed); repeatable.
    #[arg(long = "queue-arg", value_name = "NAME=VALUE")]
    pub queue_args: Vec<String>,
    /// Seconds to publish for (run mode).
    #[arg(long, short = 'z', default_value_t = 10.0)]
    pub time: f64,
    /// Messages per producer; stops earlier than --time when reached (0 = no limit).
    #[arg(long, short = 'C', default_value_t = 0)]
    pub count: u64,
    /// Seconds without progress before the remaining messages are declared lost.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Total messages to fill the queues with (backlog mode).
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Connections to open (idle mode).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Channels each idle connection opens.
    #[arg(long, default_value_t = 1)]
    pub channels: u16,
    /// Seconds to wait before reading the broker's memory (idle and backlog modes).
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// The broker's PID, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// A label copied into the JSON line.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Report loss and reordering but exit 0 anyway (for queues that drop by design).
    #[arg(long)]
    pub no_check: bool,
    /// Leave the queues and exchange in place afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses NAME=VALUE into a typed table entry: integers as signed 64-bit, true/false as
/// booleans, anything else as a string.
pub fn parse_queue_arg(s: &str) -> Result<(String, Arg), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s}: expected NAME=VALUE"))?;
    if name.is_empty() || name.len() > 255 {
        return Err(format!("{s}: bad argument name"));
    }
    let value = if let Ok(i) = value.parse::<i64>() {
        Arg::Int(i)
    } else if value == "true" || value == "false" {
        Arg::Bool(value == "true")
    } else {
        Arg::Str(value.to_string())
    };
    Ok((name.to_string(), value))
}

/// Parses `--expiration`: comma-separated milliseconds, `-` for no expiration.
pub fn parse_expirations(s: &str) -> Result<Vec<Option<u32>>, String> {
    s.split(',')
        .map(|entry| match entry.trim() {
            "-" => Ok(None),
            ms => ms
                .parse::<u32>()
                .map(Some)
                .map_err(|_| format!("--expiration: {ms:?} is not a number of ms or -")),
        })
        .collect()
}

impl Args {
    /// The `--expiration` cycle (empty when not given).
    pub fn expirations(&self) -> Vec<Option<u32>> {
        self.expiration
            .as_deref()
            .and_then(|s| parse_expirations(s).ok())
            .unwrap_or_default()
    }

    /// For each entry of the `--expiration` cycle, whether its messages are expected to expire
    /// before the drain (backlog mode, at most --settle); empty when none are.
    pub fn expiring_cycle(&self) -> Vec<bool> {
        let settle_ms = self.settle * 1000.0;
        let cycle: Vec<bool> = self
            .expirations()
            .iter()
            .map(|e| e.is_some_and(|ms| f64::from(ms) <= settle_ms))
            .collect();
        if self.mode != Mode::Backlog || !cycle.contains(&true) {
            return Vec::new();
        }
        cycle
    }

    /// Checks what clap cannot, and returns the typed queue arguments.
    pub fn validate(&self) -> Result<Table, String> {
        if self.size < crate::check::STAMP_LEN {
            return Err(format!(
                "--size must be at least {} bytes",
                crate::check::STAMP_LEN
            ));
        }
        if self.size > 512 * 1024 * 1024 {
            return Err("--size is limited to 512 MiB".into());
        }
        if self.producers > u32::MAX as usize {
            return Err("too many producers".into());
        }
        for name in [
            &self.prefix,
            &self.exchange,
            &self.routing_key,
            &self.binding_key,
        ]
        .into_iter()
        .flatten()
        {
            if name.len() > 200 {
                return Err(format!("{name}: names are limited to 200 bytes"));
            }
        }
        if !(self.rate >= 0.0
            && self.time >= 0.0
            && self.drain_timeout >= 0.0
            && self.settle >= 0.0)
        {
            return Err("rates and durations must be non-negative".into());
        }
        if let Some(expiration) = &self.expiration {
            parse_expirations(expiration)?;
            if self.mode == Mode::Backlog && self.confirm == 0 {
                return Err(
                    "--expiration in backlog mode needs --confirm: the fill is over \
                            when every message is confirmed (expiring ones never all show up)"
                        .into(),
                );
            }
        }
        self.queue_args.iter().map(|a| parse_queue_arg(a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_args_are_typed() {
        assert_eq!(
            parse_queue_arg("x-max-length=1000"),
            Ok(("x-max-length".into(), Arg::Int(1000)))
        );
        assert_eq!(
            parse_queue_arg("x-queue-type=quorum"),
            Ok(("x-queue-type".into(), Arg::Str("quorum".into())))
        );
        assert_eq!(
            parse_queue_arg("x-single-active-consumer=true"),
            Ok(("x-single-active-consumer".into(), Arg::Bool(true)))
        );
        assert!(parse_queue_arg("novalue").is_err());
    }

    #[test]
    fn expirations_parse_and_say_what_expires_before_the_drain() {
        assert_eq!(
            parse_expirations("-,1000,600000"),
            Ok(vec![None, Some(1000), Some(600_000)])
        );
        assert!(parse_expirations("-,soon").is_err());
        let args = Args::parse_from([
            "warren-loadgen",
            "--mode",
            "backlog",
            "--confirm",
            "100",
            "--settle",
            "3",
            "--expiration",
            "-,1000,600000",
        ]);
        assert!(args.validate().is_ok());
        assert_eq!(args.expiring_cycle(), [false, true, false]);
        let unconfirmed = Args::parse_from([
            "warren-loadgen",
            "--mode",
            "backlog",
            "--expiration",
            "1000",
        ]);
        assert!(unconfirmed.validate().is_err());
    }

    #[test]
    fn small_bodies_are_refused() {
        let args = Args::parse_from(["warren-loadgen", "--size", "8"]);
        assert!(args.validate().is_err());
        let args = Args::parse_from([
            "warren-loadgen",
            "--size",
            "16",
            "--queue-arg",
            "x-max-length=5",
        ]);
        assert_eq!(args.validate().unwrap().len(), 1);
    }
}
