//! The Warren broker as a library, so tests can start it in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren_server::StartError> {
//! let broker = warren_server::start(warren_server::Config::for_tests()).await?;
//! let addr = broker.local_addr(); // 127.0.0.1 and a free port
//! // ... connect clients to `amqp://guest:guest@{addr}` ...
//! broker.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Layout: `listener` accepts and spawns one task per connection; `connection` owns the socket
//! (handshake, heartbeats, frame loop, the single writer); `channel` handles methods; `broker`
//! holds vhosts and their topology; `queue` holds each queue's messages and consumers behind
//! its own lock; `memory` is the memory account (budget, paging threshold, alarm), `pager`
//! the thread that pages bodies to disk and back, and `disk` the free disk space alarm;
//! `config` and `auth` are start-up.

pub mod arguments;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod disk;
pub mod error;
pub mod levels;
pub mod listener;
pub mod memory;
pub mod pager;
pub mod queue;

pub use config::Config;
pub use listener::{RunningBroker, StartError, start};
