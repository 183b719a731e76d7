//! Users and SASL: RabbitMQ-format salted SHA-256 password hashes, and the PLAIN and AMQPLAIN
//! mechanisms (AMQPLAIN is kombu's and py-amqp's default).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

/// The mechanisms announced in `connection.start`, in RabbitMQ's order.
pub const MECHANISMS: &str = "AMQPLAIN PLAIN";

/// Hashes a password as `rabbit_password_hashing_sha256` does: a random 4-byte salt, then
/// base64(salt ++ sha256(salt ++ password)). The result can be pasted into RabbitMQ definitions.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    hash_with_salt(salt, password.as_bytes())
}

fn hash_with_salt(salt: [u8; 4], password: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password);
    let mut out = Vec::with_capacity(36);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&hasher.finalize());
    BASE64.encode(out)
}

/// Splits a stored hash into salt and digest; `None` when it is not RabbitMQ's SHA-256 format.
pub fn decode_hash(stored: &str) -> Option<([u8; 4], [u8; 32])> {
    let raw = BASE64.decode(stored.trim()).ok()?;
    if raw.len() != 36 {
        return None;
    }
    let salt: [u8; 4] = raw.get(..4)?.try_into().ok()?;
    let digest: [u8; 32] = raw.get(4..)?.try_into().ok()?;
    Some((salt, digest))
}

/// Whether `password` matches the stored hash. Compares every byte, so the time taken does not
/// tell how long a matching prefix was.
pub fn verify_password(stored: &str, password: &[u8]) -> bool {
    let Some((salt, digest)) = decode_hash(stored) else {
        return false;
    };
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password);
    let computed = hasher.finalize();
    computed
        .iter()
        .zip(digest.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Credentials extracted from a SASL response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The login name.
    pub username: Vec<u8>,
    /// The password, as sent.
    pub password: Vec<u8>,
}

/// Why a SASL response could not be used. The texts follow RabbitMQ's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// A mechanism other than PLAIN or AMQPLAIN (503 COMMAND_INVALID).
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
    /// The response does not parse (refused like a bad password, as RabbitMQ does).
    #[error("response invalid")]
    Malformed,
}

/// Parses a SASL response for `mechanism`.
pub fn parse_response(mechanism: &[u8], response: &[u8]) -> Result<Credentials, SaslError> {
    match mechanism {
        b"PLAIN" => parse_plain(response),
        b"AMQPLAIN" => parse_amqplain(response),
        other => Err(SaslError::UnknownMechanism(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// PLAIN (RFC 4616) as RabbitMQ accepts it: `\0user\0password`, with an empty authorization id.
fn parse_plain(response: &[u8]) -> Result<Credentials, SaslError> {
    let rest = response.strip_prefix(&[0u8]).ok_or(SaslError::Malformed)?;
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(SaslError::Malformed)?;
    let (username, password) = rest.split_at(nul);
    let password = password.get(1..).ok_or(SaslError::Malformed)?;
    if password.contains(&0) {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        username: username.to_vec(),
        password: password.to_vec(),
    })
}

/// AMQPLAIN: a field table without its 4-byte length prefix, with `LOGIN` and `PASSWORD` long
/// strings. Only the value types a client would put there are accepted.
fn parse_amqplain(mut response: &[u8]) -> Result<Credentials, SaslError> {
    let mut username = None;
    let mut password = None;
    while !response.is_empty() {
        let (&key_len, rest) = response.split_first().ok_or(SaslError::Malformed)?;
        let key = rest
            .get(..usize::from(key_len))
            .ok_or(SaslError::Malformed)?;
        let rest = rest
            .get(usize::from(key_len)..)
            .ok_or(SaslError::Malformed)?;
        let (&kind, rest) = rest.split_first().ok_or(SaslError::Malformed)?;
        let (value, rest) = match kind {
            b'S' => {
                let len_bytes: [u8; 4] = rest
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(SaslError::Malformed)?;
                let len = usize::try_from(u32::from_be_bytes(len_bytes))
                    .map_err(|_| SaslError::Malformed)?;
                let rest = rest.get(4..).ok_or(SaslError::Malformed)?;
                let value = rest.get(..len).ok_or(SaslError::Malformed)?;
                (value, rest.get(len..).ok_or(SaslError::Malformed)?)
            }
            b's' => {
                let (&len, rest) = rest.split_first().ok_or(SaslError::Malformed)?;
                let value = rest.get(..usize::from(len)).ok_or(SaslError::Malformed)?;
                (
                    value,
                    rest.get(usize::from(len)..).ok_or(SaslError::Malformed)?,
                )
            }
            _ => return Err(SaslError::Malformed),
        };
        match key {
            b"LOGIN" => username = Some(value.to_vec()),
            b"PASSWORD" => password = Some(value.to_vec()),
            _ => {}
        }
        response = rest;
    }
    match (username, password) {
        (Some(username), Some(password)) => Ok(Credentials { username, password }),
        _ => Err(SaslError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_rabbitmq_format() {
        // The salt is the first 4 bytes of the stored value; check the digest by hand.
        let stored = hash_with_salt([1, 2, 3, 4], b"guest");
        let raw = BASE64.decode(&stored).unwrap();
        assert_eq!(raw.len(), 36);
        assert_eq!(&raw[..4], &[1, 2, 3, 4]);
        let mut h = Sha256::new();
        h.update([1u8, 2, 3, 4]);
        h.update(b"guest");
        assert_eq!(&raw[4..], h.finalize().as_slice());
        assert!(verify_password(&stored, b"guest"));
        assert!(!verify_password(&stored, b"guesT"));
        assert!(!verify_password("not base64!", b"guest"));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash_password("x"), hash_password("x"));
    }

    #[test]
    fn plain_parses_and_rejects() {
        let c = parse_response(b"PLAIN", b"\0guest\0pw").unwrap();
        assert_eq!(c.username, b"guest");
        assert_eq!(c.password, b"pw");
        assert_eq!(
            parse_response(b"PLAIN", b"guest\0pw"),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            parse_response(b"PLAIN", b"\0guest"),
            Err(SaslError::Malformed)
        );
        assert_eq!(parse_response(b"PLAIN", b""), Err(SaslError::Malformed));
        assert!(matches!(
            parse_response(b"CRAM-MD5", b""),
            Err(SaslError::UnknownMechanism(_))
        ));
    }

    #[test]
    fn amqplain_parses_and_rejects_truncation() {
        let mut r = Vec::new();
        r.push(5);
        r.extend_from_slice(b"LOGIN");
        r.push(b'S');
        r.extend_from_slice(&5u32.to_be_bytes());
        r.extend_from_slice(b"guest");
        r.push(8);
        r.extend_from_slice(b"PASSWORD");
        r.push(b'S');
        r.extend_from_slice(&3u32.to_be_bytes());
        r.extend_from_slice(b"pwd");
        let c = parse_response(b"AMQPLAIN", &r).unwrap();
        assert_eq!(c.username, b"guest");
        assert_eq!(c.password, b"pwd");
        for cut in 0..r.len() - 1 {
            assert!(parse_response(b"AMQPLAIN", &r[..cut]).is_err(), "cut {cut}");
        }
        let mut huge = r.clone();
        huge[7..11].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_response(b"AMQPLAIN", &huge).is_err());
    }
}
