//! Typed values serde parses from the config's text, with messages that say what is wanted
//! (serde_path_to_error puts the key in front: "invalid config at `sqs.queue_url`: …").

use std::net::SocketAddr;

use serde::de::{Deserialize, Deserializer, Error};
use url::Url;

/// A listen address, `host:port` with an IP host.
pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        D::Error::custom(format!(
            "must be an address like 0.0.0.0:8080 (an IP and a port), got `{text}`"
        ))
    })
}

/// An http(s) URL; empty or unset: none (sqs.queue_url's "not set").
pub fn http_url_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => parse_http_url(&text).map(Some).map_err(D::Error::custom),
        None => Ok(None),
    }
}

/// An http(s) URL when set.
pub fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| parse_http_url(&text).map_err(D::Error::custom))
        .transpose()
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    let wanted = || format!("must be a queue URL (https://…), got `{text}`");
    let url = Url::parse(text).map_err(|e| format!("{} ({e})", wanted()))?;
    if matches!(url.scheme(), "https" | "http") && url.has_host() {
        Ok(url)
    } else {
        Err(wanted())
    }
}

/// Any URL; empty or unset: none. Its scheme is checked where it is used (rate.redis.url).
pub fn url_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) if text.is_empty() => Ok(None),
        // The text is not repeated: a Redis URL may hold a password.
        Some(text) => Url::parse(&text)
            .map(Some)
            .map_err(|e| D::Error::custom(format!("not a URL ({e})"))),
        None => Ok(None),
    }
}

/// A SHA-256 digest written as 64 hex digits.
pub fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let text = String::deserialize(d)?;
    parse_sha256(&text).map_err(D::Error::custom)
}

/// 64 hex digits as the 32 bytes they spell.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| {
        format!("must be 64 hex digits (printf %s \"$KEY\" | sha256sum), got `{text}`")
    })?;
    Ok(out)
}

/// One of an enum's names (`earliest`, `latest`): read as text and matched by the enum's own
/// serde names, so a wrong one is said as "unknown variant `x`, expected `a` or `b`" (the
/// config crate's own enum path names no choices).
pub fn variant<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::value::{Error as ValueError, StrDeserializer};
    let text = String::deserialize(d)?;
    T::deserialize(StrDeserializer::<ValueError>::new(&text)).map_err(D::Error::custom)
}
