//! Header helpers shared by the stages: a leaf, so that `forward` and `upgrade`
//! can both read `Connection` without importing each other.

use http::{header, HeaderMap};

/// The comma-separated tokens of every `Connection` field, trimmed. Split on
/// the raw bytes, not `to_str()`: one obs-text byte anywhere in the value must
/// not make us skip the tokens listed next to it.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}
