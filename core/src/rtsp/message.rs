//! RTSP messages as Moonlight speaks them (protocol notes §4.1): requests from the client, replies from
//! the host. One request per TCP connection; the host replies and closes.
//!
//! Parsing ([`Request::parse`], [`request_len`]) takes untrusted bytes: the head (request line and
//! headers) must end in `\r\n\r\n` within [`MAX_HEAD_LEN`] bytes, each line is at most
//! [`MAX_LINE_LEN`] bytes of printable ASCII, there are at most [`MAX_HEADERS`] headers, and the body
//! is exactly `Content-length` bytes (at most [`MAX_BODY_LEN`]). Header names match case-insensitively
//! and may not repeat.
//!
//! Serializing a reply ([`Response::serialize`]) produces only what the client's parser reads back
//! unchanged: status line `RTSP/1.0 <code> <reason>`, at least one header (the client needs one to
//! find the end of the head), `Name: value` with exactly one space (the client drops the first
//! character after the colon), no name twice (the client keeps only the last), and a body with no NUL (the client searches it as a C string). No
//! `Content-Length` is needed: the client reads the body until the host closes.

use std::fmt::Write as _;

/// Largest request accepted, head and body together.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Largest head (request line and headers, without the blank line).
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Longest line of the head.
pub const MAX_LINE_LEN: usize = 1024;
/// Most headers in one message.
pub const MAX_HEADERS: usize = 32;
/// Largest body (`Content-length`).
pub const MAX_BODY_LEN: usize = MAX_MESSAGE_LEN - MAX_HEAD_LEN - 4;
/// The only protocol version either side speaks.
pub const RTSP_VERSION: &str = "RTSP/1.0";

const HEAD_END: &[u8] = b"\r\n\r\n";

/// Why bytes are not an acceptable RTSP message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The head has not ended (no `\r\n\r\n`) in the bytes given.
    #[error("RTSP head is incomplete")]
    Incomplete,
    /// No end of head within the size limit.
    #[error("RTSP head longer than {MAX_HEAD_LEN} bytes")]
    HeadTooLong,
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("RTSP message of {len} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLong { len: usize },
    /// A line longer than [`MAX_LINE_LEN`].
    #[error("RTSP line {line} is {len} bytes, over {MAX_LINE_LEN}")]
    LineTooLong { line: usize, len: usize },
    /// A byte that may not appear in the head (control character, bare CR/LF, non-ASCII).
    #[error("RTSP line {line} holds byte {byte:#04x}")]
    BadByte { line: usize, byte: u8 },
    /// The request or status line is not `METHOD target RTSP/1.0` / `RTSP/1.0 code reason`.
    #[error("malformed RTSP start line: {0:?}")]
    BadStartLine(String),
    /// A header line without a `:` or with an invalid name.
    #[error("malformed RTSP header on line {line}")]
    BadHeader { line: usize },
    /// More than [`MAX_HEADERS`] headers.
    #[error("more than {MAX_HEADERS} RTSP headers")]
    TooManyHeaders,
    /// The same header name twice (ignoring case): the client's own option list cannot hold
    /// duplicates, so two values could only be an attempt at ambiguity.
    #[error("RTSP header {0:?} appears twice")]
    DuplicateHeader(String),
    /// `Content-length` is not a decimal number, appears twice, or exceeds [`MAX_BODY_LEN`].
    #[error("bad Content-length: {0:?}")]
    BadContentLength(String),
    /// Fewer body bytes than `Content-length`.
    #[error("RTSP body truncated: {have} of {want} bytes")]
    Truncated { have: usize, want: usize },
    /// Bytes after the body (the client never sends a second request on a connection).
    #[error("{0} bytes after the RTSP message")]
    TrailingBytes(usize),
}

/// Why a message cannot be written in a form the peer reads back unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SerializeError {
    #[error("invalid RTSP method {0:?}")]
    BadMethod(String),
    #[error("invalid RTSP target {0:?}")]
    BadTarget(String),
    #[error("invalid RTSP status {0}")]
    BadStatus(u16),
    #[error("invalid RTSP reason phrase {0:?}")]
    BadReason(String),
    #[error("invalid RTSP header name {0:?}")]
    BadHeaderName(String),
    #[error("invalid value for RTSP header {name:?}")]
    BadHeaderValue { name: String },
    /// A reply needs at least one header for the client to find the end of its head.
    #[error("an RTSP reply needs at least one header")]
    NoHeaders,
    #[error("more than {MAX_HEADERS} RTSP headers")]
    TooManyHeaders,
    /// The client keeps one value per name (the last), so a repeated name would not read back.
    #[error("RTSP header {0:?} appears twice")]
    DuplicateHeader(String),
    /// A request body needs exactly one matching `Content-length`, and none without a body.
    #[error("Content-length does not describe the {body_len}-byte body")]
    ContentLengthMismatch { body_len: usize },
    /// The client treats a reply body as a C string.
    #[error("NUL byte in an RTSP reply body")]
    NulInBody,
    #[error("RTSP line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    #[error("RTSP message of {len} bytes exceeds the limits")]
    TooLong { len: usize },
}

/// Headers in the order they came, with case-insensitive and (as the client does) case-sensitive
/// lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// First value of `name`, ignoring ASCII case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// First value of exactly `name` (how the client looks headers up).
    pub fn get_exact(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends a header.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        Self(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// A request from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Request {
    /// The `CSeq` header as a number, if it is one.
    pub fn cseq(&self) -> Option<u32> {
        self.headers.get("CSeq")?.parse().ok()
    }

    /// Parses exactly one complete request.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let head = parse_head(bytes, ValueStyle::Trimmed)?;
        let (method, target) = parse_request_line(head.start)?;
        let body_len = content_length(&head.headers)?;
        let want = head.body_start + body_len;
        if bytes.len() < want {
            return Err(ParseError::Truncated {
                have: bytes.len() - head.body_start,
                want: body_len,
            });
        }
        if bytes.len() > want {
            return Err(ParseError::TrailingBytes(bytes.len() - want));
        }
        Ok(Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: head.headers,
            body: bytes[head.body_start..].to_vec(),
        })
    }

    /// Writes the request as the client does (used by tests and test clients). The body needs exactly
    /// one `Content-length` header giving its size; no body, no `Content-length` (or `0`).
    pub fn serialize(&self) -> Result<Vec<u8>, SerializeError> {
        if self.method.is_empty() || !self.method.bytes().all(is_tchar) {
            return Err(SerializeError::BadMethod(self.method.clone()));
        }
        if self.target.is_empty() || !self.target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SerializeError::BadTarget(self.target.clone()));
        }
        let lengths: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Content-length"))
            .map(|(_, v)| v)
            .collect();
        let declared = match lengths.as_slice() {
            [] => 0,
            [v] => parse_decimal(v).ok_or(SerializeError::ContentLengthMismatch {
                body_len: self.body.len(),
            })?,
            _ => {
                return Err(SerializeError::ContentLengthMismatch {
                    body_len: self.body.len(),
                })
            }
        };
        if declared != self.body.len() || declared > MAX_BODY_LEN {
            return Err(SerializeError::ContentLengthMismatch {
                body_len: self.body.len(),
            });
        }
        let start = format!("{} {} {RTSP_VERSION}", self.method, self.target);
        write_message(&start, &self.headers, &self.body)
    }
}

/// Where a request ends, from what has arrived so far: `Ok(None)` while the head is incomplete, then
/// `Ok(Some(n))` with the request's full length (head and body; `n` may exceed `buf.len()`, the body
/// is still arriving). Errors as soon as the head is malformed or over the limits.
pub fn request_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let head = match parse_head(buf, ValueStyle::Trimmed) {
        Ok(head) => head,
        Err(ParseError::Incomplete) => return Ok(None),
        Err(e) => return Err(e),
    };
    parse_request_line(head.start)?;
    Ok(Some(head.body_start + content_length(&head.headers)?))
}

/// A reply from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    /// A reply with the standard reason for `status` and one `CSeq` header.
    pub fn new(status: u16, cseq: &str) -> Self {
        let mut headers = Headers::new();
        headers.push("CSeq", cseq);
        Response {
            status,
            reason: reason_phrase(status).to_owned(),
            headers,
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Writes the reply in the form the client's parser accepts (see the module notes).
    pub fn serialize(&self) -> Result<Vec<u8>, SerializeError> {
        if !(100..=999).contains(&self.status) {
            return Err(SerializeError::BadStatus(self.status));
        }
        if !is_clean_value(&self.reason) || self.reason.is_empty() {
            return Err(SerializeError::BadReason(self.reason.clone()));
        }
        if self.headers.is_empty() {
            return Err(SerializeError::NoHeaders);
        }
        if self.body.contains(&0) {
            return Err(SerializeError::NulInBody);
        }
        let start = format!("{RTSP_VERSION} {} {}", self.status, self.reason);
        write_message(&start, &self.headers, &self.body)
    }

    /// Parses a reply by the client's rules (tests and test clients): the body is everything after
    /// the head, and each header value is the text after `": "`, verbatim.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(ParseError::TooLong { len: bytes.len() });
        }
        let head = parse_head(bytes, ValueStyle::Exact)?;
        let bad = || ParseError::BadStartLine(head.start.to_owned());
        let rest = head
            .start
            .strip_prefix(RTSP_VERSION)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(bad)?;
        let (code, reason) = rest.split_once(' ').ok_or_else(bad)?;
        let status = match code.len() {
            3 => code.parse::<u16>().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if reason.is_empty() || head.headers.is_empty() {
            return Err(bad());
        }
        Ok(Response {
            status,
            reason: reason.to_owned(),
            headers: head.headers,
            body: bytes[head.body_start..].to_vec(),
        })
    }
}

/// The reason phrase lumen sends with each status.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "Error",
    }
}

/// How a header value is read: requests trim surrounding blanks (lenient with the peer); replies are
/// read as the client reads them, everything after `": "`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ValueStyle {
    Trimmed,
    Exact,
}

struct Head<'a> {
    start: &'a str,
    headers: Headers,
    body_start: usize,
}

fn parse_head(bytes: &[u8], style: ValueStyle) -> Result<Head<'_>, ParseError> {
    let window = &bytes[..bytes.len().min(MAX_HEAD_LEN + HEAD_END.len())];
    let Some(head_len) = window.windows(HEAD_END.len()).position(|w| w == HEAD_END) else {
        return Err(if window.len() >= MAX_HEAD_LEN + HEAD_END.len() {
            ParseError::HeadTooLong
        } else {
            ParseError::Incomplete
        });
    };
    let head = &bytes[..head_len];
    let mut lines = Vec::new();
    let mut rest = head;
    loop {
        let (line, more) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        let n = lines.len();
        if line.len() > MAX_LINE_LEN {
            return Err(ParseError::LineTooLong {
                line: n,
                len: line.len(),
            });
        }
        if let Some(&byte) = line
            .iter()
            .find(|&&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
        {
            return Err(ParseError::BadByte { line: n, byte });
        }
        // Checked above: printable ASCII only.
        let text =
            std::str::from_utf8(line).map_err(|_| ParseError::BadByte { line: n, byte: 0 })?;
        lines.push(text);
        if lines.len() > MAX_HEADERS + 1 {
            return Err(ParseError::TooManyHeaders);
        }
        match more {
            Some(m) => rest = m,
            None => break,
        }
    }
    let (start, header_lines) = lines.split_first().ok_or(ParseError::Incomplete)?;
    let mut headers = Headers::new();
    for (i, line) in header_lines.iter().enumerate() {
        let bad = ParseError::BadHeader { line: i + 1 };
        let (name, value) = line.split_once(':').ok_or(bad.clone())?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(bad);
        }
        let value = match style {
            ValueStyle::Trimmed => value.trim_matches([' ', '\t']),
            ValueStyle::Exact => value.strip_prefix(' ').ok_or(bad)?,
        };
        if headers.get(name).is_some() {
            return Err(ParseError::DuplicateHeader(name.to_owned()));
        }
        headers.push(name, value);
    }
    Ok(Head {
        start,
        headers,
        body_start: head_len + HEAD_END.len(),
    })
}

fn parse_request_line(line: &str) -> Result<(&str, &str), ParseError> {
    let bad = || ParseError::BadStartLine(line.to_owned());
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty()
        || !method.bytes().all(is_tchar)
        || target.is_empty()
        || !target.bytes().all(|b| b.is_ascii_graphic())
        || version != RTSP_VERSION
    {
        return Err(bad());
    }
    Ok((method, target))
}

fn content_length(headers: &Headers) -> Result<usize, ParseError> {
    let mut found = None;
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("Content-length") {
            if found.is_some() {
                return Err(ParseError::BadContentLength(value.to_owned()));
            }
            let len = parse_decimal(value)
                .filter(|&n| n <= MAX_BODY_LEN)
                .ok_or_else(|| ParseError::BadContentLength(value.to_owned()))?;
            found = Some(len);
        }
    }
    Ok(found.unwrap_or(0))
}

/// A plain decimal of at most 9 digits (no sign, no blanks).
fn parse_decimal(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// RFC 7230 `tchar`: what method and header-name characters may be.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Printable ASCII or tab, with no blank at either end.
fn is_clean_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        && !v.starts_with([' ', '\t'])
        && !v.ends_with([' ', '\t'])
}

fn write_message(start: &str, headers: &Headers, body: &[u8]) -> Result<Vec<u8>, SerializeError> {
    if headers.len() > MAX_HEADERS {
        return Err(SerializeError::TooManyHeaders);
    }
    let mut head = String::new();
    head.push_str(start);
    head.push_str("\r\n");
    if start.len() > MAX_LINE_LEN {
        return Err(SerializeError::LineTooLong);
    }
    for (i, (name, value)) in headers.iter().enumerate() {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(SerializeError::BadHeaderName(name.to_owned()));
        }
        if headers
            .iter()
            .take(i)
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return Err(SerializeError::DuplicateHeader(name.to_owned()));
        }
        // Requests are read back trimmed, so a value with outer blanks would not round-trip; replies
        // are read verbatim by the client, but lumen has no reason to send outer blanks either.
        if !is_clean_value(value) {
            return Err(SerializeError::BadHeaderValue {
                name: name.to_owned(),
            });
        }
        if name.len() + 2 + value.len() > MAX_LINE_LEN {
            return Err(SerializeError::LineTooLong);
        }
        // Writing to a String cannot fail.
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    if head.len() - HEAD_END.len() > MAX_HEAD_LEN || head.len() + body.len() > MAX_MESSAGE_LEN {
        return Err(SerializeError::TooLong {
            len: head.len() + body.len(),
        });
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Ok(out)
}
