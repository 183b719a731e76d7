//! Exchanges and bindings: for a published message, the set of queues it goes to. No I/O.
//!
//! One [`Topology`] per vhost holds its exchanges, its bindings and the handles of its queues.
//! It is generic over the server's queue handle `Q` (an `Arc<QueueHandle>` in the broker):
//! bindings store a clone of the handle, so [`Topology::route`] hands back handles the server
//! pushes to directly, with no second lookup by name per message. Routing follows RabbitMQ
//! 3.10: the default exchange, direct, fanout, topic (`*`, `#`, empty words), headers
//! (`x-match` all/any/all-with-x/any-with-x), exchange-to-exchange bindings (transitive,
//! cycles end, each queue once) and alternate exchanges (transitive).
//!
//! # Concurrency
//!
//! Every method takes `&self`; share the topology with `Arc`. Routing takes read locks only,
//! one exchange at a time; a writer (declare, bind, delete) holds a write lock only for one
//! small change to one map or one exchange's index, so publishers never wait for a whole bulk
//! operation (a queue with 10,000 bindings being deleted, say). Writers are serialised by a
//! mutex that readers never take. See `docs/architecture.md`, "crates/router", for why this
//! was chosen over copy-on-write snapshots.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use warren_codec::ShortString;
//! use warren_router::{
//!     Binding, Declared, ExchangeDef, ExchangeKind, RouteBuf, RouteOutcome, Topology,
//! };
//!
//! let name = |s: &str| ShortString::try_from(s).unwrap();
//! // The server's queue handle type; here a plain Arc<String>.
//! let topology: Topology<Arc<String>> = Topology::new("/");
//!
//! // queue.declare: the server creates the queue, then makes it routable.
//! let orders = Arc::new("orders".to_string());
//! assert!(topology.add_queue(name("orders"), orders.clone()));
//!
//! // exchange.declare: 503 for an unknown type comes from ExchangeKind::parse.
//! let kind = ExchangeKind::parse(b"topic").unwrap();
//! let def = ExchangeDef::new(name("shop"), kind).durable(true);
//! assert_eq!(topology.declare_exchange(def.clone()), Ok(Declared::Created));
//! assert_eq!(topology.declare_exchange(def), Ok(Declared::Existed));
//!
//! // queue.bind: Ok(true) when new, Ok(false) when it was already there.
//! let binding = Binding::queue(name("shop"), name("orders"), name("order.*.eu"));
//! assert_eq!(topology.bind(&binding), Ok(true));
//!
//! // basic.publish: one RouteBuf per channel, reused for every message.
//! let mut out = RouteBuf::new();
//! let outcome = topology.route(b"shop", &[b"order.created.eu"], None, &mut out);
//! assert_eq!(outcome, RouteOutcome::Routed(1));
//! assert!(Arc::ptr_eq(&out.queues()[0], &orders));
//!
//! // The default exchange routes by queue name; CC keys are extra routing keys.
//! let outcome = topology.route(b"", &[b"orders", b"nothing"], None, &mut out);
//! assert_eq!(outcome, RouteOutcome::Routed(1));
//! assert_eq!(topology.route(b"nope", &[b"k"], None, &mut out), RouteOutcome::ExchangeNotFound);
//!
//! // queue.delete: bindings go with the queue.
//! let removed = topology.remove_queue(b"orders").unwrap();
//! assert_eq!(removed.bindings.len(), 1);
//! assert_eq!(topology.route(b"shop", &[b"order.created.eu"], None, &mut out), RouteOutcome::Unroutable);
//! ```
//!
//! Errors are [`RouterError`]s carrying the reply code ([`RouterError::reply_code`]) and
//! RabbitMQ's reply text; the server decides whether to close the channel or connection.

mod dest;
mod direct;
mod error;
mod exchange;
mod fanout;
mod headers;
mod route;
mod topic;
mod topology;

pub use error::{RouterError, reply_code};
pub use exchange::{ALTERNATE_EXCHANGE, ExchangeDef, ExchangeKind};
pub use headers::XMatch;
pub use route::{RouteBuf, RouteOutcome};
pub use topology::{Binding, Declared, Destination, Removed, Topology};
