//! The `warren` binary: parses flags, loads the configuration, starts the broker, prints
//! `listening on ADDR` per listener, and shuts down gracefully on SIGTERM or SIGINT.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use warren_server::config::{self, Overrides};

/// Warren: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
///
/// Settings come from (lowest to highest precedence) built-in defaults, the --config file,
/// WARREN_* environment variables (WARREN_LISTEN, WARREN_DATA_DIR, WARREN_EPHEMERAL,
/// WARREN_LOG_LEVEL, WARREN_LIMITS__FRAME_MAX, ...) and these flags.
#[derive(Debug, Parser)]
#[command(name = "warren", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:5672 or [::1]:5672; repeat for several listeners;
    /// port 0 picks a free port (the chosen address is printed). Default 127.0.0.1:5672.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        env = "WARREN_LISTEN",
        value_delimiter = ','
    )]
    listen: Vec<String>,
    /// Folder for durable data. Default ./warren-data.
    #[arg(long, value_name = "DIR", env = "WARREN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep nothing on disk: every queue lives in memory only (for tests and CI).
    #[arg(long, env = "WARREN_EPHEMERAL")]
    ephemeral: bool,
    /// A TOML configuration file (see warren.toml in the repository for every setting).
    #[arg(long, value_name = "FILE", env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// warren_server=debug. Logs go to stderr. Default info.
    #[arg(long, value_name = "LEVEL", env = "WARREN_LOG_LEVEL")]
    log_level: Option<String>,
    /// Memory budget for messages, as RabbitMQ's vm_memory_high_watermark: a fraction of the
    /// RAM (0.4, 40%) or a size (2GiB, 512MB, bytes). Bodies are paged to disk above half of it
    /// (limits.memory_paging_ratio); publishers are blocked above it. Default 0.4.
    #[arg(long, value_name = "LIMIT")]
    memory_high_watermark: Option<String>,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with its causes), not a Debug dump with a backtrace.
            eprintln!("warren: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let overrides = Overrides {
        config_file: args.config,
        listen: args.listen,
        data_dir: args.data_dir,
        ephemeral: args.ephemeral,
        log_level: args.log_level,
        memory_high_watermark: args.memory_high_watermark,
    };
    let cfg = config::load(&overrides).context("loading the configuration")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
                .context("parsing the log level")?,
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let broker = warren_server::start(cfg).await?;
        {
            let mut stdout = std::io::stdout().lock();
            for addr in broker.local_addrs() {
                writeln!(stdout, "listening on {addr}")?;
            }
            stdout.flush()?;
        }
        wait_for_signal().await?;
        broker.shutdown().await;
        anyhow::Ok(())
    })
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}
