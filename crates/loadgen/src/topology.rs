//! The exchange, queues and bindings of a run: their names, declaring and deleting them, and a
//! model of where each producer's messages should land, which the loss check relies on.

use crate::client::{CHANNEL, ClientError, Conn};
use crate::wire::{Arg, In, Out, Table};

/// The header a `headers` exchange matches on.
pub const HEADER_KEY: &str = "loadgen-key";

/// Exchange types the generator can route through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            ExchangeType::Headers => "headers",
        }
    }
}

/// Everything a run declares, and who publishes where.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The exchange producers publish to; empty for the default exchange.
    pub exchange: String,
    /// `None` for the default exchange, which needs no declaring.
    pub exchange_type: Option<ExchangeType>,
    pub queues: Vec<String>,
    /// One binding key per queue (unused for the default exchange).
    pub binding_keys: Vec<String>,
    /// One routing key per producer.
    pub routing_keys: Vec<String>,
    pub durable: bool,
    pub queue_args: Table,
}

/// What the user asked for, before names are made up.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    pub prefix: String,
    pub exchange: Option<String>,
    pub exchange_type: Option<ExchangeType>,
    pub queues: usize,
    pub producers: usize,
    pub routing_key: Option<String>,
    pub binding_key: Option<String>,
    pub durable: bool,
    pub queue_args: Table,
}

impl Topology {
    /// Names queues `PREFIX.q0..`, and the exchange `PREFIX.x` unless given. Producer `p` uses
    /// the routing key given, or else the name of queue `p % queues`, which with a direct or the
    /// default exchange spreads producers over queues.
    pub fn new(spec: &TopologySpec) -> Topology {
        let queues: Vec<String> = (0..spec.queues.max(1))
            .map(|i| format!("{}.q{i}", spec.prefix))
            .collect();
        let exchange_type = spec
            .exchange_type
            .or_else(|| spec.exchange.as_ref().map(|_| ExchangeType::Direct));
        let exchange = match (&spec.exchange, exchange_type) {
            (Some(name), _) => name.clone(),
            (None, Some(_)) => format!("{}.x", spec.prefix),
            (None, None) => String::new(),
        };
        let binding_keys = queues
            .iter()
            .map(|q| match (&spec.binding_key, exchange_type) {
                (Some(key), _) => key.clone(),
                (None, Some(ExchangeType::Fanout)) => String::new(),
                (None, _) => q.clone(),
            })
            .collect();
        let routing_keys = (0..spec.producers)
            .map(|p| {
                spec.routing_key
                    .clone()
                    .unwrap_or_else(|| queues[p % queues.len()].clone())
            })
            .collect();
        Topology {
            exchange,
            exchange_type,
            queues,
            binding_keys,
            routing_keys,
            durable: spec.durable,
            queue_args: spec.queue_args.clone(),
        }
    }

    /// Whether producer `producer`'s messages should reach queue `queue`.
    pub fn routes(&self, producer: usize, queue: usize) -> bool {
        let (Some(key), Some(binding), Some(name)) = (
            self.routing_keys.get(producer),
            self.binding_keys.get(queue),
            self.queues.get(queue),
        ) else {
            return false;
        };
        match self.exchange_type {
            None => key == name,
            Some(ExchangeType::Direct) | Some(ExchangeType::Headers) => key == binding,
            Some(ExchangeType::Fanout) => true,
            Some(ExchangeType::Topic) => topic_matches(binding, key),
        }
    }

    /// `routes` for every producer, for one queue.
    pub fn routed_to(&self, queue: usize) -> Vec<bool> {
        (0..self.routing_keys.len())
            .map(|p| self.routes(p, queue))
            .collect()
    }

    /// The headers table producer `producer` sends (only for a headers exchange).
    pub fn message_headers(&self, producer: usize) -> Option<Table> {
        match self.exchange_type {
            Some(ExchangeType::Headers) => {
                let key = self.routing_keys.get(producer).cloned().unwrap_or_default();
                Some(vec![(HEADER_KEY.to_string(), Arg::Str(key))])
            }
            _ => None,
        }
    }

    /// Declares the exchange and the queues, binds them, and empties the queues.
    pub async fn declare(&self, conn: &mut Conn) -> Result<(), ClientError> {
        if let Some(kind) = self.exchange_type {
            let declare = Out::ExchangeDeclare {
                exchange: &self.exchange,
                kind: kind.as_str(),
                durable: self.durable,
                auto_delete: false,
            };
            conn.call(CHANNEL, &declare, "exchange.declare-ok", |m| {
                matches!(m, In::ExchangeDeclareOk)
            })
            .await?;
        }
        for (queue, binding) in self.queues.iter().zip(&self.binding_keys) {
            let declare = Out::QueueDeclare {
                queue,
                passive: false,
                durable: self.durable,
                exclusive: false,
                auto_delete: false,
                arguments: &self.queue_args,
            };
            conn.call(CHANNEL, &declare, "queue.declare-ok", |m| {
                matches!(m, In::QueueDeclareOk { .. })
            })
            .await?;
            if let Some(kind) = self.exchange_type {
                let arguments = match kind {
                    ExchangeType::Headers => vec![
                        ("x-match".to_string(), Arg::Str("all".into())),
                        (HEADER_KEY.to_string(), Arg::Str(binding.clone())),
                    ],
                    _ => Table::new(),
                };
                let bind = Out::QueueBind {
                    queue,
                    exchange: &self.exchange,
                    routing_key: binding,
                    arguments: &arguments,
                };
                conn.call(CHANNEL, &bind, "queue.bind-ok", |m| {
                    matches!(m, In::QueueBindOk)
                })
                .await?;
            }
            conn.call(CHANNEL, &Out::QueuePurge { queue }, "queue.purge-ok", |m| {
                matches!(m, In::QueuePurgeOk { .. })
            })
            .await?;
        }
        Ok(())
    }

    /// Ready messages over all queues, by passive declare.
    pub async fn ready_messages(&self, conn: &mut Conn) -> Result<u64, ClientError> {
        let mut total = 0u64;
        let empty = Table::new();
        for queue in &self.queues {
            let declare = Out::QueueDeclare {
                queue,
                passive: true,
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: &empty,
            };
            if let In::QueueDeclareOk { message_count } = conn
                .call(CHANNEL, &declare, "queue.declare-ok", |m| {
                    matches!(m, In::QueueDeclareOk { .. })
                })
                .await?
            {
                total += u64::from(message_count);
            }
        }
        Ok(total)
    }

    /// Deletes what `declare` created.
    pub async fn delete(&self, conn: &mut Conn) -> Result<(), ClientError> {
        for queue in &self.queues {
            conn.call(
                CHANNEL,
                &Out::QueueDelete { queue },
                "queue.delete-ok",
                |m| matches!(m, In::QueueDeleteOk { .. }),
            )
            .await?;
        }
        if self.exchange_type.is_some() && !self.exchange.is_empty() {
            let delete = Out::ExchangeDelete {
                exchange: &self.exchange,
            };
            conn.call(CHANNEL, &delete, "exchange.delete-ok", |m| {
                matches!(m, In::ExchangeDeleteOk)
            })
            .await?;
        }
        Ok(())
    }
}

/// AMQP topic matching: words split by '.', `*` is exactly one word, `#` is zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    // match_from[i][j]: does pattern[i..] match key[j..]? Filled from the back.
    let mut next = vec![false; key.len() + 1];
    next[key.len()] = true;
    for word in pattern.iter().rev() {
        let mut here = vec![false; key.len() + 1];
        for j in (0..=key.len()).rev() {
            here[j] = match *word {
                "#" => next[j] || (j < key.len() && here[j + 1]),
                "*" => j < key.len() && next[j + 1],
                w => j < key.len() && key[j] == w && next[j + 1],
            };
        }
        next = here;
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TopologySpec {
        TopologySpec {
            prefix: "loadgen.t".into(),
            exchange: None,
            exchange_type: None,
            queues: 2,
            producers: 3,
            routing_key: None,
            binding_key: None,
            durable: false,
            queue_args: Table::new(),
        }
    }

    #[test]
    fn default_exchange_spreads_producers_over_queues() {
        let t = Topology::new(&spec());
        assert_eq!(t.exchange, "");
        assert_eq!(t.queues, ["loadgen.t.q0", "loadgen.t.q1"]);
        assert_eq!(t.routed_to(0), [true, false, true]);
        assert_eq!(t.routed_to(1), [false, true, false]);
    }

    #[test]
    fn fanout_reaches_every_queue() {
        let t = Topology::new(&TopologySpec {
            exchange_type: Some(ExchangeType::Fanout),
            queues: 10,
            ..spec()
        });
        assert_eq!(t.exchange, "loadgen.t.x");
        assert!((0..10).all(|q| t.routed_to(q).iter().all(|&r| r)));
    }

    #[test]
    fn topic_binding_model() {
        let t = Topology::new(&TopologySpec {
            exchange_type: Some(ExchangeType::Topic),
            routing_key: Some("a.b.c".into()),
            binding_key: Some("a.#".into()),
            ..spec()
        });
        assert!(t.routes(0, 0) && t.routes(2, 1));
    }

    #[test]
    fn topic_matching() {
        for (pattern, key, expected) in [
            ("a.b", "a.b", true),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "", true),
            ("#.c", "a.b.c", true),
            ("*.b.#", "a.b", true),
            ("a.*.c", "a.c", false),
            ("#.#", "x", true),
        ] {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }
}
