//! Exchange definitions: kind, flags and arguments, and RabbitMQ's redeclare equivalence rule.

use bytes::Bytes;
use warren_codec::{FieldTable, FieldValue, ShortString};

use crate::error::RouterError;

/// The argument naming an exchange's alternate exchange.
pub const ALTERNATE_EXCHANGE: &[u8] = b"alternate-exchange";

/// The four exchange types of AMQP 0-9-1 that Warren implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every binding, routing key ignored.
    Fanout,
    /// Dot-separated words with `*` (one word) and `#` (zero or more words).
    Topic,
    /// Message headers against binding arguments (`x-match`).
    Headers,
}

impl ExchangeKind {
    /// Parses the `type` field of `exchange.declare`; `None` for anything else (RabbitMQ answers
    /// 503 COMMAND_INVALID, see [`ExchangeKind::parse`]).
    pub fn from_name(name: &[u8]) -> Option<ExchangeKind> {
        match name {
            b"direct" => Some(ExchangeKind::Direct),
            b"fanout" => Some(ExchangeKind::Fanout),
            b"topic" => Some(ExchangeKind::Topic),
            b"headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// Like [`ExchangeKind::from_name`], with RabbitMQ's 503 error for unknown types.
    pub fn parse(name: &[u8]) -> Result<ExchangeKind, RouterError> {
        ExchangeKind::from_name(name).ok_or_else(|| RouterError::CommandInvalid {
            text: format!("unknown exchange type '{}'", String::from_utf8_lossy(name)),
        })
    }

    /// The name used on the wire and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Everything `exchange.declare` says about an exchange; also what the store persists.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    /// The exchange name (`""` is the default exchange).
    pub name: ShortString,
    /// The exchange type.
    pub kind: ExchangeKind,
    /// Survives a broker restart (the store persists it).
    pub durable: bool,
    /// Deleted when its last binding as a source goes (not when it is created unbound).
    pub auto_delete: bool,
    /// Clients may not publish to it directly; only exchange-to-exchange bindings reach it.
    pub internal: bool,
    /// Declare arguments as received; only `alternate-exchange` has a meaning here.
    pub arguments: FieldTable,
}

impl ExchangeDef {
    /// A plain definition: not durable, not auto-delete, not internal, no arguments.
    pub fn new(name: ShortString, kind: ExchangeKind) -> ExchangeDef {
        ExchangeDef {
            name,
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        }
    }

    /// The same definition with `durable` set.
    pub fn durable(mut self, durable: bool) -> ExchangeDef {
        self.durable = durable;
        self
    }

    /// The same definition with `auto_delete` set.
    pub fn auto_delete(mut self, auto_delete: bool) -> ExchangeDef {
        self.auto_delete = auto_delete;
        self
    }

    /// The same definition with `internal` set.
    pub fn internal(mut self, internal: bool) -> ExchangeDef {
        self.internal = internal;
        self
    }

    /// The same definition with these declare arguments.
    pub fn arguments(mut self, arguments: FieldTable) -> ExchangeDef {
        self.arguments = arguments;
        self
    }

    /// The alternate exchange named by the `alternate-exchange` argument, when it is a long
    /// string (RabbitMQ ignores other types at routing time and refuses them at declare time).
    pub fn alternate_exchange(&self) -> Option<&Bytes> {
        match self.arguments.get(ALTERNATE_EXCHANGE) {
            Some(FieldValue::LongString(name)) => Some(name),
            _ => None,
        }
    }

    /// Whether this is one of the exchanges every vhost starts with (`""` and `amq.*`).
    pub fn is_predeclared(&self) -> bool {
        self.name.is_empty() || self.name.as_bytes().starts_with(b"amq.")
    }

    /// RabbitMQ's redeclare rule: `requested` is equivalent to `self` when kind, durable,
    /// auto_delete and internal are equal and the `alternate-exchange` arguments are equal
    /// (other arguments are not compared). `vhost` only shapes the 406 text.
    pub fn check_equivalent(
        &self,
        requested: &ExchangeDef,
        vhost: &str,
    ) -> Result<(), RouterError> {
        let field = |name: &str, received: &str, current: &str| RouterError::PreconditionFailed {
            text: format!(
                "inequivalent arg '{name}' for exchange '{}' in vhost '{vhost}': received '{received}' but current is '{current}'",
                self.name
            ),
        };
        if requested.kind != self.kind {
            return Err(field("type", requested.kind.as_str(), self.kind.as_str()));
        }
        let flags = [
            ("durable", requested.durable, self.durable),
            ("auto_delete", requested.auto_delete, self.auto_delete),
            ("internal", requested.internal, self.internal),
        ];
        for (name, received, current) in flags {
            if received != current {
                return Err(field(name, bool_str(received), bool_str(current)));
            }
        }
        let received = requested.arguments.get(ALTERNATE_EXCHANGE);
        let current = self.arguments.get(ALTERNATE_EXCHANGE);
        if received != current {
            return Err(RouterError::PreconditionFailed {
                text: format!(
                    "inequivalent arg 'alternate-exchange' for exchange '{}' in vhost '{vhost}': received {} but current is {}",
                    self.name,
                    describe_arg(received),
                    describe_arg(current)
                ),
            });
        }
        Ok(())
    }
}

fn bool_str(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// RabbitMQ's `val/1` rendering of an argument in an inequivalence message.
fn describe_arg(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".to_string(),
        Some(FieldValue::LongString(bytes)) => format!(
            "the value '{}' of type 'longstr'",
            String::from_utf8_lossy(bytes)
        ),
        Some(other) => format!("the value '{other:?}'"),
    }
}
