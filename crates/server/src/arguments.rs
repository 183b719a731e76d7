//! RabbitMQ 3.10's rules for queue and consume arguments: which queue type takes which
//! argument, the checks on their values, the equivalence rule for a redeclare, and the parser of
//! the per-message `expiration` property, each with RabbitMQ's reply text byte for byte.
//!
//! The texts embed Erlang terms (`{value_negative,-1}`, `"expected integer, got longstr"`,
//! `'1.0e3'`), because RabbitMQ formats its error terms with `~p`; the helpers at the bottom
//! print values the way Erlang does. Every text here was recorded from a real RabbitMQ 3.10.8
//! (the table is in `tests/tests/arguments.rs` and `docs/compatibility.md`).
//!
//! The order of the checks is RabbitMQ's: the dead-letter exchange's type (checked by the
//! channel), then `x-queue-type`, then the value checks in RabbitMQ's fixed argument order for
//! the arguments the queue type takes, then the first argument (in the client's order) that the
//! type does not take, then the properties a quorum queue refuses.

use warren_codec::{FieldTable, FieldValue, ShortString};

use crate::error::{AmqpError, ChannelError, ConnectionError};

/// The longest TTL, `x-expires` and `expiration` RabbitMQ accepts: ten years in milliseconds.
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// A queue's type (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// The default.
    Classic,
    /// Durable only; adds `x-delivery-limit` and the `x-delivery-count` header.
    Quorum,
    /// Validated as RabbitMQ does, then refused: Warren has no streams.
    Stream,
}

/// Arguments a classic queue takes, in the order RabbitMQ compares them on a redeclare.
const CLASSIC: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
];

/// Arguments a quorum queue takes, in RabbitMQ's comparison order.
const QUORUM: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// Arguments a stream takes, in RabbitMQ's comparison order.
const STREAM: &[&str] = &[
    "x-max-length-bytes",
    "x-queue-type",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// The order in which RabbitMQ checks argument values (`rabbit_amqqueue:declare_args/0`).
const CHECK_ORDER: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
    "x-queue-master-locator",
];

impl QueueType {
    /// The type named by a queue's arguments (classic when absent or not a known name).
    pub fn of(arguments: &FieldTable) -> QueueType {
        match arguments.get(b"x-queue-type") {
            Some(FieldValue::LongString(name)) => match &name[..] {
                b"quorum" => QueueType::Quorum,
                b"stream" => QueueType::Stream,
                _ => QueueType::Classic,
            },
            _ => QueueType::Classic,
        }
    }

    /// RabbitMQ's module name, as it appears in reply texts.
    fn module(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
            QueueType::Stream => "rabbit_stream_queue",
        }
    }

    /// The arguments this type takes, in the order a redeclare compares them.
    fn arguments(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => CLASSIC,
            QueueType::Quorum => QUORUM,
            QueueType::Stream => STREAM,
        }
    }
}

/// What `queue.declare` asks for, as far as the checks care.
pub struct Declared<'a> {
    /// The queue name.
    pub queue: &'a ShortString,
    /// The vhost name.
    pub vhost: &'a str,
    /// `durable`.
    pub durable: bool,
    /// `exclusive`.
    pub exclusive: bool,
    /// `auto-delete`.
    pub auto_delete: bool,
    /// `arguments`.
    pub arguments: &'a FieldTable,
}

impl Declared<'_> {
    fn resource(&self) -> String {
        format!("queue '{}' in vhost '{}'", self.queue, self.vhost)
    }

    fn invalid(&self, key: &str, why: &str) -> AmqpError {
        ChannelError::precondition_failed(format!(
            "invalid arg '{key}' for {}: {why}",
            self.resource()
        ))
        .into()
    }
}

/// Checks a new queue's properties and arguments as RabbitMQ 3.10 does; returns its type.
pub fn check_declare(declare: &Declared<'_>) -> Result<QueueType, AmqpError> {
    let arguments = declare.arguments;
    // rabbit_channel looks at the dead-letter exchange before anything else.
    if let Some(value) = arguments.get(b"x-dead-letter-exchange")
        && !is_string(value)
    {
        return Err(ChannelError::precondition_failed(format!(
            "invalid type '{}' for arg 'x-dead-letter-exchange' in {}",
            value.type_name(),
            declare.resource()
        ))
        .into());
    }
    let queue_type = match arguments.get(b"x-queue-type") {
        None => QueueType::Classic,
        Some(FieldValue::LongString(name)) => match &name[..] {
            b"classic" => QueueType::Classic,
            b"quorum" => QueueType::Quorum,
            b"stream" => QueueType::Stream,
            other => {
                return Err(declare.invalid(
                    "x-queue-type",
                    &erlang_string(&format!(
                        "unsupported queue type '{}'",
                        String::from_utf8_lossy(other)
                    )),
                ));
            }
        },
        Some(other) => {
            return Err(declare.invalid("x-queue-type", &unacceptable(other)));
        }
    };
    let supported = queue_type.arguments();
    for key in CHECK_ORDER {
        if !supported.contains(key) {
            continue;
        }
        if let Some(value) = arguments.get(key.as_bytes())
            && let Err(why) = check_value(key, value, arguments)
        {
            return Err(declare.invalid(key, &why));
        }
    }
    let all_known = || CLASSIC.iter().chain(QUORUM).chain(STREAM);
    for (key, _) in arguments.iter() {
        let Some(key) = key.as_str() else { continue };
        if all_known().any(|k| *k == key) && !supported.contains(&key) {
            return Err(ChannelError::precondition_failed(format!(
                "invalid arg '{key}' for {} of queue type {}",
                declare.resource(),
                queue_type.module()
            ))
            .into());
        }
    }
    if queue_type != QueueType::Classic {
        // RabbitMQ makes an exclusive queue non-durable before these checks.
        let refused = if declare.auto_delete {
            Some("auto-delete")
        } else if declare.exclusive {
            Some("exclusive-owner")
        } else if !declare.durable {
            Some("non-durable")
        } else {
            None
        };
        if let Some(property) = refused {
            return Err(ChannelError::precondition_failed(format!(
                "invalid property '{property}' for {}",
                declare.resource()
            ))
            .into());
        }
    }
    if queue_type == QueueType::Stream {
        // Deliberate difference: RabbitMQ 3.10 declares a stream; Warren has none, and a
        // classic queue in its place would delete what a stream consumer expects to re-read.
        return Err(declare.invalid(
            "x-queue-type",
            &erlang_string("unsupported queue type 'stream'"),
        ));
    }
    Ok(queue_type)
}

/// RabbitMQ's check of one argument value; `Err` holds the Erlang term of its error.
fn check_value(key: &str, value: &FieldValue, arguments: &FieldTable) -> Result<(), String> {
    match key {
        "x-expires" => expiry(value, true),
        "x-message-ttl" => expiry(value, false),
        "x-max-length"
        | "x-max-length-bytes"
        | "x-max-in-memory-length"
        | "x-max-in-memory-bytes"
        | "x-stream-max-segment-size-bytes" => non_negative(value).map(|_| ()),
        "x-max-priority" => {
            let n = non_negative(value)?;
            if n > 255 {
                return Err(format!("{{max_value_exceeded,{n}}}"));
            }
            Ok(())
        }
        "x-quorum-initial-group-size" | "x-initial-cluster-size" => {
            if non_negative(value)? == 0 {
                return Err("{value_zero,0}".to_owned());
            }
            Ok(())
        }
        "x-dead-letter-routing-key" => {
            string(value)?;
            if arguments.get(b"x-dead-letter-exchange").is_none() {
                return Err("routing_key_but_no_dlx_defined".to_owned());
            }
            Ok(())
        }
        "x-dead-letter-strategy" => one_of(
            value,
            &["at-most-once", "at-least-once"],
            "invalid_dlx_strategy",
        ),
        "x-overflow" => one_of(
            value,
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            "invalid_overflow",
        ),
        "x-queue-mode" => {
            let mode = string(value)?;
            if mode == "default" || mode == "lazy" {
                return Ok(());
            }
            Err(erlang_string(&format!("unsupported queue mode '{mode}'")))
        }
        "x-single-active-consumer" => match value {
            FieldValue::Bool(_) => Ok(()),
            other => Err(unacceptable(other)),
        },
        "x-queue-leader-locator" => one_of(
            value,
            &["client-local", "random", "least-leaders", "balanced"],
            "invalid_queue_locator_arg",
        ),
        // RabbitMQ 3.10 crashes (541) on a bad master locator or max-age; Warren answers 406.
        "x-queue-master-locator" => one_of(
            value,
            &["client-local", "min-masters", "random"],
            "invalid_queue_locator_arg",
        ),
        "x-max-age" => {
            let age = string(value)?;
            let digits = age.trim_end_matches(['Y', 'M', 'D', 'h', 'm', 's']);
            if age.len() == digits.len() + 1
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Ok(());
            }
            Err("invalid_max_age".to_owned())
        }
        _ => Ok(()),
    }
}

/// `x-expires` (positive) and `x-message-ttl` (zero allowed): integers up to ten years.
fn expiry(value: &FieldValue, positive: bool) -> Result<(), String> {
    let n = non_negative(value)?;
    if positive && n == 0 {
        return Err("{value_zero,0}".to_owned());
    }
    if n > MAX_EXPIRY_MS as i64 {
        return Err(format!("{{value_too_large,{n}}}"));
    }
    Ok(())
}

/// An integer that is not negative.
fn non_negative(value: &FieldValue) -> Result<i64, String> {
    let Some(n) = integer(value) else {
        return Err(erlang_string(&format!(
            "expected integer, got {}",
            value.type_name()
        )));
    };
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    Ok(n)
}

/// A long string (RabbitMQ also takes a byte array where it wants a string).
fn string(value: &FieldValue) -> Result<String, String> {
    match value {
        FieldValue::LongString(s) => Ok(String::from_utf8_lossy(s).into_owned()),
        other => Err(unacceptable(other)),
    }
}

fn one_of(value: &FieldValue, allowed: &[&str], error: &str) -> Result<(), String> {
    let s = string(value)?;
    if allowed.contains(&s.as_str()) {
        Ok(())
    } else {
        Err(error.to_owned())
    }
}

fn unacceptable(value: &FieldValue) -> String {
    format!("{{unacceptable_type,{}}}", value.type_name())
}

fn is_string(value: &FieldValue) -> bool {
    matches!(value, FieldValue::LongString(_))
}

/// Checks a redeclare against the existing queue: `durable`, `auto-delete`, then the arguments
/// its type takes, in RabbitMQ's order. Arguments the type does not take are not compared.
pub fn check_equivalent(
    declare: &Declared<'_>,
    queue_type: QueueType,
    durable: bool,
    auto_delete: bool,
    current: &FieldTable,
) -> Result<(), AmqpError> {
    let inequivalent = |key: &str, received: String, current: String| -> AmqpError {
        ChannelError::precondition_failed(format!(
            "inequivalent arg '{key}' for {}: received {received} but current is {current}",
            declare.resource()
        ))
        .into()
    };
    for (key, received, current) in [
        ("durable", declare.durable, durable),
        ("auto_delete", declare.auto_delete, auto_delete),
    ] {
        if received != current {
            return Err(inequivalent(
                key,
                format!("'{received}'"),
                format!("'{current}'"),
            ));
        }
    }
    for key in queue_type.arguments() {
        let received = declare.arguments.get(key.as_bytes());
        let existing = current.get(key.as_bytes());
        if *key == "x-queue-type"
            && queue_type == QueueType::Classic
            && received.is_none_or(|v| *v == FieldValue::LongString("classic".into()))
        {
            continue;
        }
        match (received, existing) {
            (None, None) => {}
            (Some(r), Some(c)) => {
                if !equivalent(r, c) {
                    return Err(inequivalent(key, quoted(r), quoted(c)));
                }
            }
            (r, c) => return Err(inequivalent(key, described(r), described(c))),
        }
    }
    Ok(())
}

/// RabbitMQ's `val/1` for a value compared without its type (void is Erlang's `undefined`,
/// which it shows as `none`).
fn quoted(value: &FieldValue) -> String {
    match value {
        FieldValue::Void => "none".to_owned(),
        other => format!("'{}'", erlang_value(other)),
    }
}

/// RabbitMQ's `val/1` for an argument present on one side only.
fn described(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".to_owned(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            erlang_value(v),
            v.type_name()
        ),
    }
}

/// Same value and same type class (every integer type is one class, as are the two floats and
/// the two string types), as RabbitMQ compares arguments.
fn equivalent(a: &FieldValue, b: &FieldValue) -> bool {
    if let (Some(x), Some(y)) = (integer(a), integer(b)) {
        return x == y;
    }
    match (a, b) {
        (
            FieldValue::LongString(x) | FieldValue::ByteArray(x),
            FieldValue::LongString(y) | FieldValue::ByteArray(y),
        ) => x == y,
        (FieldValue::F32(_) | FieldValue::F64(_), FieldValue::F32(_) | FieldValue::F64(_)) => {
            float(a) == float(b)
        }
        _ => a == b,
    }
}

/// Checks `basic.consume` arguments as RabbitMQ does.
pub fn check_consume(
    queue: &ShortString,
    vhost: &str,
    queue_type: QueueType,
    arguments: &FieldTable,
) -> Result<(), AmqpError> {
    let invalid = |key: &str, why: String| -> AmqpError {
        ChannelError::precondition_failed(format!(
            "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}'{why}"
        ))
        .into()
    };
    if let Some(value) = arguments.get(b"x-priority")
        && integer(value).is_none()
    {
        return Err(invalid(
            "x-priority",
            format!(
                ": {}",
                erlang_string(&format!("expected integer, got {}", value.type_name()))
            ),
        ));
    }
    if let Some(value) = arguments.get(b"x-cancel-on-ha-failover")
        && !matches!(value, FieldValue::Bool(_))
    {
        return Err(invalid(
            "x-cancel-on-ha-failover",
            format!(": {}", unacceptable(value)),
        ));
    }
    if arguments.get(b"x-stream-offset").is_some() && queue_type != QueueType::Stream {
        return Err(invalid(
            "x-stream-offset",
            format!(" of queue type {}", queue_type.module()),
        ));
    }
    Ok(())
}

/// A quorum queue refuses consumers on a channel with a global prefetch (540, connection).
pub fn global_qos_refused(queue: &ShortString, vhost: &str) -> AmqpError {
    ConnectionError::not_implemented(format!(
        "queue '{queue}' in vhost '{vhost}' does not support global qos"
    ))
    .on(60, 20)
    .into()
}

/// Parses the `expiration` property as RabbitMQ does (Erlang's `string:to_integer/1`, then the
/// ten-year cap): the TTL in milliseconds, or the 406 channel error RabbitMQ sends.
pub fn parse_expiration(expiration: &[u8]) -> Result<u64, AmqpError> {
    let shown = String::from_utf8_lossy(expiration);
    let prefix = format!("invalid expiration '{shown}': ");
    let fail = |term: String| -> AmqpError {
        ChannelError::precondition_failed(format!("{prefix}{term}"))
            .on(60, 40)
            .into()
    };
    let (negative, rest) = match expiration.first() {
        Some(b'-') => (true, &expiration[1..]),
        Some(b'+') => (false, &expiration[1..]),
        _ => (false, expiration),
    };
    let n_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if n_digits == 0 {
        return Err(fail("no_integer".to_owned()));
    }
    let (digits, leftover) = rest.split_at(n_digits);
    if !leftover.is_empty() {
        let term = format!(
            "{{leftover_string,{}}}",
            erlang_string(&String::from_utf8_lossy(leftover))
        );
        return Err(fail(wrap_pair(&prefix, &term)));
    }
    // Erlang integers have no size limit: compare as normalized digit strings.
    let digits = std::str::from_utf8(digits).unwrap_or("0");
    let digits = match digits.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let value = digits.parse::<u64>().ok().filter(|n| *n <= MAX_EXPIRY_MS);
    match (negative && digits != "0", value) {
        (true, _) => Err(fail(wrap_pair(
            &prefix,
            &format!("{{value_negative,-{digits}}}"),
        ))),
        (false, Some(ms)) => Ok(ms),
        (false, None) => Err(fail(wrap_pair(
            &prefix,
            &format!("{{value_too_large,{digits}}}"),
        ))),
    }
}

/// Erlang's `~p` breaks a two-element tuple that would pass column 80 after its first
/// element, indenting the second under it.
fn wrap_pair(prefix: &str, term: &str) -> String {
    let column = prefix.chars().count();
    if column + term.chars().count() <= 80 {
        return term.to_owned();
    }
    match term.split_once(',') {
        Some((first, second)) => {
            format!("{first},\n{}{second}", " ".repeat(column + 1))
        }
        None => term.to_owned(),
    }
}

// ===== Values as RabbitMQ names and prints them =====

/// An integer of any width.
pub fn integer(value: &FieldValue) -> Option<i64> {
    match value {
        FieldValue::I8(v) => Some(i64::from(*v)),
        FieldValue::U8(v) => Some(i64::from(*v)),
        FieldValue::I16(v) => Some(i64::from(*v)),
        FieldValue::U16(v) => Some(i64::from(*v)),
        FieldValue::I32(v) => Some(i64::from(*v)),
        FieldValue::U32(v) => Some(i64::from(*v)),
        FieldValue::I64(v) => Some(*v),
        _ => None,
    }
}

fn float(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::F32(v) => Some(f64::from(*v)),
        FieldValue::F64(v) => Some(*v),
        _ => None,
    }
}

/// A string as Erlang's `~p` prints a character list: in double quotes, `"` and `\` escaped.
fn erlang_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A value as RabbitMQ prints it in an inequivalence text: strings bare, the rest as `~p`.
fn erlang_value(value: &FieldValue) -> String {
    match value {
        FieldValue::LongString(s) | FieldValue::ByteArray(s) => {
            String::from_utf8_lossy(s).into_owned()
        }
        other => erlang_term(other),
    }
}

/// A value as an Erlang term (`~p`), the way RabbitMQ holds it after parsing.
fn erlang_term(value: &FieldValue) -> String {
    if let Some(n) = integer(value) {
        return n.to_string();
    }
    match value {
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::F32(_) | FieldValue::F64(_) => erlang_float(float(value).unwrap_or(0.0)),
        FieldValue::Decimal { scale, value } => format!("{{{scale},{value}}}"),
        FieldValue::LongString(s) | FieldValue::ByteArray(s) => erlang_binary(s),
        FieldValue::Timestamp(t) => t.to_string(),
        FieldValue::Void => "undefined".to_owned(),
        FieldValue::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|v| format!("{{{},{}}}", v.type_name(), erlang_term(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        FieldValue::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{{{},{},{}}}",
                        erlang_binary(k.as_bytes()),
                        v.type_name(),
                        erlang_term(v)
                    )
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => String::new(),
    }
}

/// A binary as `~p` prints it: `<<"text">>` when printable, else its bytes.
fn erlang_binary(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        format!(
            "<<{}>>",
            erlang_string(std::str::from_utf8(bytes).unwrap_or(""))
        )
    } else {
        let bytes: Vec<String> = bytes.iter().map(u8::to_string).collect();
        format!("<<{}>>", bytes.join(","))
    }
}

/// A float as Erlang prints it: the shortest digits that read back, with an exponent only
/// when that is shorter (`1.0e3`, `100.0`, `2.5`).
fn erlang_float(f: f64) -> String {
    if !f.is_finite() {
        return f.to_string();
    }
    let sign = if f < 0.0 { "-" } else { "" };
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if digits.chars().all(|c| c == '0') {
        return format!("{sign}0.0");
    }
    // value = 0.DIGITS x 10^place
    let place = exponent.parse::<i64>().unwrap_or(0) + 1;
    let len = digits.len() as i64;
    let with_exponent = || {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        format!("{sign}{first}.{rest}e{}", place - 1)
    };
    if place <= 0 || place >= len {
        let exp_len = (place - 1).to_string().len() as i64;
        let exp_cost = exp_len + 1 + if len == 1 { 2 } else { 1 };
        if place <= 0 {
            if 2 - place <= exp_cost {
                format!("{sign}0.{}{digits}", "0".repeat((-place) as usize))
            } else {
                with_exponent()
            }
        } else if place - len + 2 <= exp_cost {
            format!("{sign}{digits}{}.0", "0".repeat((place - len) as usize))
        } else {
            with_exponent()
        }
    } else {
        let (int, frac) = digits.split_at(place as usize);
        format!("{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_erlang_does() {
        for (f, shown) in [
            (1000.0, "1.0e3"),
            (100.0, "100.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (1.0e20, "1.0e20"),
            (1.5e-7, "1.5e-7"),
            (12345678.0, "12345678.0"),
            (-1.5, "-1.5"),
            (0.0, "0.0"),
            (123456.0, "123456.0"),
        ] {
            assert_eq!(erlang_float(f), shown, "{f}");
        }
    }

    #[test]
    fn long_expiration_terms_wrap_like_erlang() {
        let Err(AmqpError::Channel(e)) = parse_expiration(b"99999999999999999999") else {
            panic!("accepted")
        };
        assert_eq!(
            e.text,
            format!(
                "PRECONDITION_FAILED - invalid expiration '99999999999999999999': {{value_too_large,\n{}99999999999999999999}}",
                " ".repeat(44)
            )
        );
        assert_eq!(parse_expiration(b"+5").ok(), Some(5));
        assert_eq!(parse_expiration(b"00100").ok(), Some(100));
        assert_eq!(parse_expiration(b"-0").ok(), Some(0));
        assert_eq!(parse_expiration(b"315360000000").ok(), Some(MAX_EXPIRY_MS));
    }
}
