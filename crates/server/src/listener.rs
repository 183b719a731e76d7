//! The accept loops: one per listening address, a connection permit per client (the connection
//! cap), a task per connection inside its `conn{id, peer}` span, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::Config;
use crate::connection;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data folder could not be opened.
    #[error("cannot open the data folder")]
    Store(#[from] warren_store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A broker running in the current tokio runtime. Dropping it signals shutdown; call
/// [`RunningBroker::shutdown`] to also wait until every connection has closed.
pub struct RunningBroker {
    addrs: Vec<SocketAddr>,
    broker: Arc<Broker>,
    shutdown_tx: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    max_connections: u32,
    accept_tasks: Vec<JoinHandle<()>>,
    /// The expiry sweeper and the disk monitor; awaited on shutdown, so that no task still
    /// holds the broker (and its data folder's lock) once `shutdown` returns.
    background_tasks: Vec<JoinHandle<()>>,
}

/// Binds every configured listener and starts accepting connections.
pub async fn start(config: Config) -> Result<RunningBroker, StartError> {
    let config = Arc::new(config);
    let broker = Arc::new(Broker::new(Arc::clone(&config))?);
    let (shutdown_tx, _) = watch::channel(false);
    let max_connections = u32::try_from(config.limits.max_connections.min(Semaphore::MAX_PERMITS))
        .unwrap_or(u32::MAX);
    let permits = Arc::new(Semaphore::new(max_connections as usize));
    let mut addrs = Vec::new();
    let mut listeners = Vec::new();
    for addr in &config.listeners {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            addr: *addr,
            source,
        })?;
        addrs.push(local);
        listeners.push(listener);
    }
    let mut background_tasks = Vec::new();
    // The disk alarm: free space on the data folder's file system, measured now and then.
    if !config.ephemeral {
        // Once before the first client, so one that publishes at once already sees the alarm.
        broker.disk.check();
        background_tasks.push(tokio::spawn(
            Arc::clone(&broker.disk).run(shutdown_tx.subscribe()),
        ));
    }
    // Messages with a TTL expire (and are dead-lettered) even when nobody touches their queue.
    {
        let broker = Arc::clone(&broker);
        let mut shutdown = shutdown_tx.subscribe();
        background_tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        for vhost in broker.vhosts() {
                            vhost.sweep_expired();
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        }));
    }
    let accept_tasks = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(accept_loop(
                listener,
                Arc::clone(&broker),
                Arc::clone(&permits),
                shutdown_tx.subscribe(),
            ))
        })
        .collect();
    Ok(RunningBroker {
        addrs,
        broker,
        shutdown_tx,
        permits,
        max_connections,
        accept_tasks,
        background_tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = broker.next_connection_id();
        let broker = Arc::clone(&broker);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection::serve(broker, stream, peer, id, shutdown).await;
            drop(permit);
        });
    }
}

impl RunningBroker {
    /// The first listener's bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Every listener's bound address, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The memory account: bodies of messages in queues held in memory, plus their
    /// bookkeeping estimate (see `memory.rs`).
    pub fn memory_used(&self) -> usize {
        self.broker.memory.used()
    }

    /// The memory account with its parts (paged-out bytes and messages as of the pager's last
    /// survey, a few milliseconds old), the budget and the paging threshold.
    pub fn memory_report(&self) -> crate::memory::MemoryReport {
        self.broker.memory.report()
    }

    /// Changes the free disk space limit at run time and measures again at once (RabbitMQ's
    /// `rabbitmqctl set_disk_free_limit`); until the next start, where the configuration rules.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.broker.disk.set_limit(bytes);
    }

    /// Whether the disk alarm is on (free space below the limit, or the store failing to write).
    pub fn disk_alarm(&self) -> bool {
        self.broker.disk.alarm()
    }

    /// Stops accepting, sends every connection `connection.close` 320 CONNECTION_FORCED, and
    /// waits (up to a few seconds) for them to finish.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        self.shutdown_tx.send_replace(true);
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        for task in self.background_tasks.drain(..) {
            let _ = task.await;
        }
        let all = tokio::time::timeout(
            Duration::from_secs(5),
            self.permits.acquire_many(self.max_connections),
        )
        .await;
        if all.is_err() {
            warn!("some connections did not close in time");
        }
        self.broker.close_store();
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
    }
}
