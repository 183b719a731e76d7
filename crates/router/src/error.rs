//! Why a topology change was refused, with the AMQP reply code and RabbitMQ's wording.

/// AMQP reply codes the router's errors map to. Raw numbers rather than `codec::ReplyCode`
/// so the router does not depend on the generated code; the values are the spec's.
pub mod reply_code {
    /// 403: the operation is not allowed on this object (default exchange, `amq.*` names).
    pub const ACCESS_REFUSED: u16 = 403;
    /// 404: the named exchange or queue does not exist.
    pub const NOT_FOUND: u16 = 404;
    /// 406: the request conflicts with the current state (inequivalent redeclare, in use).
    pub const PRECONDITION_FAILED: u16 = 406;
    /// 503: a connection-level error for an unknown exchange type.
    pub const COMMAND_INVALID: u16 = 503;
}

/// A refused topology change. Every variant carries the reply text RabbitMQ 3.10 sends, so the
/// server can put it in `channel.close` (or `connection.close` for `CommandInvalid`) unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// 404: an exchange named in the request does not exist.
    #[error("{text}")]
    ExchangeNotFound {
        /// RabbitMQ's reply text, e.g. `no exchange 'x' in vhost '/'`.
        text: String,
    },
    /// 404: a queue named in the request does not exist.
    #[error("{text}")]
    QueueNotFound {
        /// RabbitMQ's reply text, e.g. `no queue 'q' in vhost '/'`.
        text: String,
    },
    /// 403: the default exchange or a reserved `amq.` name was touched.
    #[error("{text}")]
    AccessRefused {
        /// RabbitMQ's reply text.
        text: String,
    },
    /// 406: inequivalent redeclare, exchange in use, invalid binding or argument.
    #[error("{text}")]
    PreconditionFailed {
        /// RabbitMQ's reply text.
        text: String,
    },
    /// 503 (a connection error): the exchange type is not one Warren knows.
    #[error("{text}")]
    CommandInvalid {
        /// RabbitMQ's reply text, e.g. `unknown exchange type 'x-foo'`.
        text: String,
    },
}

impl RouterError {
    /// 404 with RabbitMQ's text, e.g. for a publish to a missing exchange
    /// ([`crate::RouteOutcome::ExchangeNotFound`]).
    pub fn exchange_not_found(vhost: &str, name: &[u8]) -> RouterError {
        RouterError::ExchangeNotFound {
            text: format!(
                "no exchange '{}' in vhost '{vhost}'",
                String::from_utf8_lossy(name)
            ),
        }
    }

    /// 404 with RabbitMQ's text for a missing queue.
    pub fn queue_not_found(vhost: &str, name: &[u8]) -> RouterError {
        RouterError::QueueNotFound {
            text: format!(
                "no queue '{}' in vhost '{vhost}'",
                String::from_utf8_lossy(name)
            ),
        }
    }

    /// 403 with RabbitMQ's text for any declare, bind, unbind or delete naming `""`.
    pub fn default_exchange_refused() -> RouterError {
        RouterError::AccessRefused {
            text: "operation not permitted on the default exchange".to_string(),
        }
    }

    /// 403 with RabbitMQ's text for a publish to an internal exchange
    /// ([`crate::RouteOutcome::InternalExchange`]).
    pub fn internal_exchange(vhost: &str, name: &[u8]) -> RouterError {
        RouterError::AccessRefused {
            text: format!(
                "cannot publish to internal exchange '{}' in vhost '{vhost}'",
                String::from_utf8_lossy(name)
            ),
        }
    }

    /// The AMQP reply code this error maps to (see [`reply_code`]).
    pub fn reply_code(&self) -> u16 {
        match self {
            RouterError::ExchangeNotFound { .. } | RouterError::QueueNotFound { .. } => {
                reply_code::NOT_FOUND
            }
            RouterError::AccessRefused { .. } => reply_code::ACCESS_REFUSED,
            RouterError::PreconditionFailed { .. } => reply_code::PRECONDITION_FAILED,
            RouterError::CommandInvalid { .. } => reply_code::COMMAND_INVALID,
        }
    }

    /// Whether RabbitMQ closes the whole connection for this error (only 503 here).
    pub fn is_connection_error(&self) -> bool {
        matches!(self, RouterError::CommandInvalid { .. })
    }

    /// The reply text.
    pub fn text(&self) -> &str {
        match self {
            RouterError::ExchangeNotFound { text }
            | RouterError::QueueNotFound { text }
            | RouterError::AccessRefused { text }
            | RouterError::PreconditionFailed { text }
            | RouterError::CommandInvalid { text } => text,
        }
    }
}
