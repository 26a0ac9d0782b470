//! Query strings of nvhttp requests: `key=value` pairs separated by `&`, empty pairs tolerated
//! (moonlight-python sends `&&corever=1`), keys and values percent-decoded. Bounded in size,
//! count and key length.

/// Longest query accepted (stage 1 carries a hex-encoded certificate PEM: ~2.5 KiB for RSA-2048,
/// ~4 KiB for RSA-4096, doubled by hex).
pub const MAX_QUERY: usize = 20 * 1024;
/// Most parameters accepted.
pub const MAX_PARAMS: usize = 32;
/// Longest key accepted, encoded (the longest a client sends is `remoteControllersBitmap`).
pub const MAX_KEY: usize = 64;

/// Why a query was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("query longer than {MAX_QUERY} bytes")]
    TooLong,
    #[error("more than {MAX_PARAMS} query parameters")]
    TooMany,
    #[error("query key longer than {MAX_KEY} bytes")]
    KeyTooLong,
    #[error("malformed percent-encoding in {0:?}")]
    BadEncoding(String),
}

/// The decoded parameters, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    params: Vec<(String, String)>,
}

impl Query {
    /// Parses the part of a request-target after `?` (`None`: there was no `?`).
    pub fn parse(raw: Option<&str>) -> Result<Query, QueryError> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY {
            return Err(QueryError::TooLong);
        }
        let mut params = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            if params.len() == MAX_PARAMS {
                return Err(QueryError::TooMany);
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key.len() > MAX_KEY {
                return Err(QueryError::KeyTooLong);
            }
            params.push((decode(key)?, decode(value)?));
        }
        Ok(Query { params })
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn decode(text: &str) -> Result<String, QueryError> {
    let bad = || QueryError::BadEncoding(text.chars().take(32).collect());
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                // from_str_radix takes a sign: "+f" would pass as 0x0f.
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Decodes hex of exactly `N` bytes.
pub fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_moonlight_queries() {
        let q = Query::parse(Some(
            "uniqueid=0123456789ABCDEF&uuid=ab&&corever=1&devicename=roth&flag&x=a%20b+c",
        ))
        .unwrap();
        assert_eq!(q.get("uniqueid"), Some("0123456789ABCDEF"));
        assert_eq!(q.get("corever"), Some("1"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("x"), Some("a b c"));
        assert_eq!(q.get("missing"), None);
        assert!(Query::parse(None).unwrap().get("a").is_none());
    }

    #[test]
    fn refuses_malformed_and_oversized_queries() {
        for bad in ["a=%zz", "a=%4", "a=%ff%fe", "a=%+f", "%-1=b"] {
            assert!(
                matches!(Query::parse(Some(bad)), Err(QueryError::BadEncoding(_))),
                "{bad}"
            );
        }
        let long = format!("a={}", "x".repeat(MAX_QUERY));
        assert_eq!(Query::parse(Some(&long)).err(), Some(QueryError::TooLong));
        let many = vec!["a=1"; MAX_PARAMS + 1].join("&");
        assert_eq!(Query::parse(Some(&many)).err(), Some(QueryError::TooMany));
        assert!(Query::parse(Some(&vec!["a=1"; MAX_PARAMS].join("&"))).is_ok());
    }

    #[test]
    fn refuses_keys_longer_than_the_limit() {
        let at_limit = format!("{}=1", "k".repeat(MAX_KEY));
        assert!(Query::parse(Some(&at_limit)).is_ok());
        let over = format!("{}=1", "k".repeat(MAX_KEY + 1));
        assert_eq!(
            Query::parse(Some(&over)).err(),
            Some(QueryError::KeyTooLong)
        );
        let bare_flag = "k".repeat(MAX_KEY + 1);
        assert_eq!(
            Query::parse(Some(&bare_flag)).err(),
            Some(QueryError::KeyTooLong)
        );
    }

    #[test]
    fn hex_arrays_must_have_the_exact_length() {
        assert_eq!(hex_array::<2>("0aFF"), Some([0x0a, 0xff]));
        assert_eq!(hex_array::<2>("0a"), None);
        assert_eq!(hex_array::<2>("0aff00"), None);
        assert_eq!(hex_array::<2>("zzzz"), None);
    }
}
