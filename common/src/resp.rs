//! RESP codec: frames, an incremental request parser and RESP2/RESP3 encoders.
//!
//! The parser is incremental: it is handed whatever bytes have arrived and answers
//! `Ok(None)` until a whole request is there, so partial frames and pipelined input
//! (many requests in one read) both work without copying. Requests are what Redis
//! accepts from clients: an array of bulk strings, or an inline command line.
//! Limits match Redis's defaults (`proto-max-bulk-len` 512 MiB, 1M arguments); a
//! violation is a [`ProtocolError`] whose text is Redis's, after which the
//! connection is closed, as Redis does.
//!
//! [`Frame`] is also the reply type that shard nodes return to the proxy, so it is
//! serde-serializable; its RESP3-only shapes (maps, sets, doubles, pairs) fall
//! back to RESP2 forms when a connection has not negotiated RESP3.

use serde::{Deserialize, Serialize};

/// Largest bulk string a client may send (Redis's `proto-max-bulk-len`).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Most arguments in one request (Redis's limit for multibulk length).
pub const MAX_ARGS: usize = 1024 * 1024;
/// Longest inline command line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_LEN: usize = 64 * 1024;

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`; the string includes the error class (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1`: the null bulk string.
    Null,
    /// `*-1`: the null array.
    NullArray,
    /// `*2\r\n...`
    Array(Vec<Frame>),
    /// A double, as Redis formats it: RESP3 `,1.5`, RESP2 a bulk string.
    Double(String),
    /// Field-value pairs: RESP3 `%`, RESP2 a flat array (HGETALL).
    Map(Vec<(Frame, Frame)>),
    /// Unordered members: RESP3 `~`, RESP2 an array (SMEMBERS).
    Set(Vec<Frame>),
    /// Member-score pairs: RESP3 an array of two-element arrays, RESP2 a flat
    /// array (ZRANGE ... WITHSCORES).
    Pairs(Vec<(Frame, Frame)>),
    /// Out-of-band data (Pub/Sub messages): RESP3 `>`, RESP2 an array.
    Push(Vec<Frame>),
    /// Several replies to one command, written one after another (SUBSCRIBE of
    /// several channels confirms each).
    Replies(Vec<Frame>),
}

impl Frame {
    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }

    /// An error reply from its full text, e.g. `ERR syntax error`.
    pub fn error(text: impl Into<String>) -> Frame {
        Frame::Error(text.into())
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// Appends this frame's RESP2 wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_as(false, out)
    }

    /// Appends this frame's RESP3 wire form to `out`.
    pub fn encode_resp3(&self, out: &mut Vec<u8>) {
        self.encode_as(true, out)
    }

    fn encode_as(&self, resp3: bool, out: &mut Vec<u8>) {
        match self {
            Frame::Null | Frame::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::Double(text) if resp3 => line(out, b',', text.as_bytes()),
            Frame::Double(text) => Frame::Bulk(text.clone().into_bytes()).encode_as(resp3, out),
            Frame::Map(pairs) | Frame::Pairs(pairs) => {
                let prefix = match self {
                    Frame::Map(_) if resp3 => b'%',
                    _ => b'*',
                };
                let count = if resp3 { pairs.len() } else { pairs.len() * 2 };
                line(out, prefix, count.to_string().as_bytes());
                for (a, b) in pairs {
                    if resp3 && matches!(self, Frame::Pairs(_)) {
                        out.extend_from_slice(b"*2\r\n");
                    }
                    a.encode_as(resp3, out);
                    b.encode_as(resp3, out);
                }
            }
            Frame::Set(items) | Frame::Push(items) => {
                let prefix = match self {
                    Frame::Set(_) if resp3 => b'~',
                    Frame::Push(_) if resp3 => b'>',
                    _ => b'*',
                };
                line(out, prefix, items.len().to_string().as_bytes());
                for item in items {
                    item.encode_as(resp3, out);
                }
            }
            Frame::Replies(replies) => {
                for reply in replies {
                    reply.encode_as(resp3, out);
                }
            }
            Frame::Simple(s) => line(out, b'+', s.as_bytes()),
            Frame::Error(s) => line(out, b'-', s.as_bytes()),
            Frame::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Frame::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Frame::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.encode_as(resp3, out);
                }
            }
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Parses one reply frame of any type from the start of `buf`: `Ok(None)` when
    /// more bytes are needed, else the frame and the bytes it used. Used by clients
    /// (tests, the load generator), not by the proxy's request path.
    pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let mut pos = 0;
        Ok(parse_frame(buf, &mut pos, 0)?.map(|f| (f, pos)))
    }
}

fn line(out: &mut Vec<u8>, prefix: u8, body: &[u8]) {
    out.push(prefix);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// A malformed request; the text is Redis's, without the `ERR Protocol error: ` prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(text: impl Into<String>) -> ProtocolError {
        ProtocolError(text.into())
    }

    /// The reply a client gets before its connection is closed.
    pub fn to_frame(&self) -> Frame {
        Frame::Error(format!("ERR Protocol error: {}", self.0))
    }
}

/// A parsed request (its arguments and the bytes it used), `None` while incomplete.
pub type ParseResult = Result<Option<(Vec<Vec<u8>>, usize)>, ProtocolError>;

/// Finds the `\r\n`-terminated line starting at `start`; returns its end (index of `\r`).
fn find_crlf(buf: &[u8], start: usize) -> Option<usize> {
    buf.get(start..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| start + p)
}

fn parse_int(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Deepest nesting of arrays accepted in a reply (Redis never nests more than a
/// few levels); bounds the parser's recursion.
const MAX_DEPTH: usize = 64;

fn parse_frame(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Frame>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError::new("reply nested too deeply"));
    }
    let Some(&kind) = buf.get(*pos) else { return Ok(None) };
    let Some(end) = find_crlf(buf, *pos + 1) else {
        return Ok(None);
    };
    let body = &buf[*pos + 1..end];
    let text = || String::from_utf8_lossy(body).into_owned();
    let after = end + 2;
    let frame = match kind {
        b'+' => Frame::Simple(text()),
        b'-' => Frame::Error(text()),
        b':' => Frame::Integer(parse_int(body).ok_or_else(|| ProtocolError::new("invalid integer"))?),
        b',' => Frame::Double(text()),
        b'_' => Frame::Null,
        b'#' => Frame::Integer(i64::from(body == b"t")),
        b'$' => {
            let len = parse_int(body).ok_or_else(|| ProtocolError::new("invalid bulk length"))?;
            if len < 0 {
                *pos = after;
                return Ok(Some(Frame::Null));
            }
            let len = len as usize;
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            *pos = after + len + 2;
            return Ok(Some(Frame::Bulk(buf[after..after + len].to_vec())));
        }
        b'*' | b'~' | b'%' | b'>' => {
            let count = parse_int(body).ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
            if count < 0 {
                *pos = after;
                return Ok(Some(Frame::NullArray));
            }
            let count = if kind == b'%' { count.saturating_mul(2) } else { count };
            let mut cursor = after;
            let mut items = Vec::with_capacity((count as usize).min(1024));
            for _ in 0..count {
                match parse_frame(buf, &mut cursor, depth + 1)? {
                    Some(f) => items.push(f),
                    None => return Ok(None),
                }
            }
            *pos = cursor;
            return Ok(Some(match kind {
                b'~' => Frame::Set(items),
                b'%' => {
                    let mut items = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(a), Some(b)) = (items.next(), items.next()) {
                        pairs.push((a, b));
                    }
                    Frame::Map(pairs)
                }
                _ => Frame::Array(items),
            }));
        }
        other => return Err(ProtocolError::new(format!("unexpected reply type '{}'", other as char))),
    };
    *pos = after;
    Ok(Some(frame))
}

/// Parses one client request from the start of `buf`.
///
/// Returns `Ok(None)` when the request is incomplete, or the arguments and the
/// number of bytes consumed. An empty inline line yields an empty argument list
/// (Redis ignores it).
pub fn parse_request(buf: &[u8]) -> ParseResult {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf),
        Some(_) => parse_inline(buf),
    }
}

fn parse_multibulk(buf: &[u8]) -> ParseResult {
    let Some(end) = find_crlf(buf, 1) else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError::new("too big mbulk count string"));
        }
        return Ok(None);
    };
    let count = parse_int(&buf[1..end])
        .filter(|&n| n <= MAX_ARGS as i64)
        .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
    let mut pos = end + 2;
    if count <= 0 {
        return Ok(Some((Vec::new(), pos)));
    }
    let mut args = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let Some(&kind) = buf.get(pos) else { return Ok(None) };
        if kind != b'$' {
            return Err(ProtocolError::new(format!("expected '$', got '{}'", kind as char)));
        }
        let Some(end) = find_crlf(buf, pos + 1) else {
            if buf.len() - pos > MAX_INLINE_LEN {
                return Err(ProtocolError::new("too big bulk count string"));
            }
            return Ok(None);
        };
        let len = parse_int(&buf[pos + 1..end])
            .filter(|&n| (0..=MAX_BULK_LEN as i64).contains(&n))
            .ok_or_else(|| ProtocolError::new("invalid bulk length"))? as usize;
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(ProtocolError::new("invalid bulk length"));
        }
        args.push(buf[start..start + len].to_vec());
        pos = start + len + 2;
    }
    Ok(Some((args, pos)))
}

fn parse_inline(buf: &[u8]) -> ParseResult {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError::new("too big inline request"));
        }
        return Ok(None);
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    Ok(Some((split_inline(line)?, nl + 1)))
}

/// Splits an inline command line into arguments, honouring double and single quotes
/// and the escapes Redis accepts inside double quotes.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let unbalanced = || ProtocolError::new("unbalanced quotes in request");
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut arg = Vec::new();
        match line[i] {
            quote @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let &b = line.get(i).ok_or_else(unbalanced)?;
                    i += 1;
                    if b == quote {
                        break;
                    }
                    if b == b'\\' && quote == b'"' {
                        let &e = line.get(i).ok_or_else(unbalanced)?;
                        i += 1;
                        arg.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'0' => 0,
                            other => other,
                        });
                    } else {
                        arg.push(b);
                    }
                }
                if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(unbalanced());
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn parses_multibulk_and_reports_consumed_bytes() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n";
        let (a, used) = parse_request(buf).unwrap().unwrap();
        assert_eq!(a, args(&["GET", "a"]));
        let (b, used2) = parse_request(&buf[used..]).unwrap().unwrap();
        assert_eq!(b, args(&["PING"]));
        assert_eq!(used + used2, buf.len());
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let buf = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n";
        for cut in 0..buf.len() {
            assert_eq!(parse_request(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (a, used) = parse_request(buf).unwrap().unwrap();
        assert_eq!(a[2], b"va\r\nl");
        assert_eq!(used, buf.len());
    }

    #[test]
    fn inline_commands_split_with_quotes() {
        let (a, used) = parse_request(b"set k \"a b\\n\" 'c d'\r\n").unwrap().unwrap();
        assert_eq!(a, args(&["set", "k", "a b\n", "c d"]));
        assert_eq!(used, 21);
        assert_eq!(parse_request(b"\r\n").unwrap().unwrap().0.len(), 0);
        assert_eq!(parse_request(b"ping").unwrap(), None);
    }

    #[test]
    fn protocol_errors_use_redis_text() {
        let cases: &[(&[u8], &str)] = &[
            (b"*1\r\n:5\r\n", "expected '$', got ':'"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$999999999999\r\n", "invalid bulk length"),
            (b"*1\r\n$1\r\nab\r\n", "invalid bulk length"),
            (b"get \"a\r\n", "unbalanced quotes in request"),
        ];
        for (input, text) in cases {
            assert_eq!(parse_request(input).unwrap_err().0, *text);
        }
        assert_eq!(
            ProtocolError::new("invalid bulk length").to_frame().to_bytes(),
            b"-ERR Protocol error: invalid bulk length\r\n"
        );
    }

    #[test]
    fn reply_parser_handles_nested_arrays_and_nulls() {
        let bytes = b"*3\r\n*2\r\n:1\r\n$-1\r\n*-1\r\n$0\r\n\r\n";
        let expected = Frame::Array(vec![
            Frame::Array(vec![Frame::Integer(1), Frame::Null]),
            Frame::NullArray,
            Frame::bulk(""),
        ]);
        assert_eq!(Frame::parse(bytes).unwrap(), Some((expected, bytes.len())));
        assert!(Frame::parse(b"?garbage\r\n").is_err());
        assert!(Frame::parse(b":12x\r\n").is_err());
        assert!(
            Frame::parse(&b"*1\r\n".repeat(100_000)).is_err(),
            "deep nesting is refused, not a stack overflow"
        );
    }

    #[test]
    fn resp3_shapes_fall_back_to_resp2() {
        let both = |f: Frame| {
            let mut three = Vec::new();
            f.encode_resp3(&mut three);
            (
                String::from_utf8(f.to_bytes()).unwrap(),
                String::from_utf8(three).unwrap(),
            )
        };
        let b = |s: &str| Frame::bulk(s);
        assert_eq!(both(Frame::Null), ("$-1\r\n".into(), "_\r\n".into()));
        assert_eq!(
            both(Frame::Double("1.5".into())),
            ("$3\r\n1.5\r\n".into(), ",1.5\r\n".into())
        );
        assert_eq!(
            both(Frame::Map(vec![(b("f"), b("v"))])),
            (
                "*2\r\n$1\r\nf\r\n$1\r\nv\r\n".into(),
                "%1\r\n$1\r\nf\r\n$1\r\nv\r\n".into()
            )
        );
        assert_eq!(
            both(Frame::Set(vec![b("m")])),
            ("*1\r\n$1\r\nm\r\n".into(), "~1\r\n$1\r\nm\r\n".into())
        );
        assert_eq!(
            both(Frame::Pairs(vec![(b("m"), Frame::Double("2".into()))])),
            (
                "*2\r\n$1\r\nm\r\n$1\r\n2\r\n".into(),
                "*1\r\n*2\r\n$1\r\nm\r\n,2\r\n".into()
            )
        );
        assert_eq!(
            both(Frame::Push(vec![b("x")])),
            ("*1\r\n$1\r\nx\r\n".into(), ">1\r\n$1\r\nx\r\n".into())
        );
        assert_eq!(
            both(Frame::Replies(vec![Frame::Integer(1), Frame::Integer(2)])),
            (":1\r\n:2\r\n".into(), ":1\r\n:2\r\n".into())
        );
        // The reply parser reads RESP3 back.
        let (parsed, _) = Frame::parse(b"%1\r\n$1\r\nf\r\n,2.5\r\n").unwrap().unwrap();
        assert_eq!(parsed, Frame::Map(vec![(b("f"), Frame::Double("2.5".into()))]));
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let frame = Frame::Array(vec![
            Frame::ok(),
            Frame::error("ERR x"),
            Frame::Integer(-3),
            Frame::bulk("a\r\nb"),
            Frame::Null,
            Frame::NullArray,
            Frame::Array(vec![]),
        ]);
        let bytes = frame.to_bytes();
        assert_eq!(Frame::parse(&bytes).unwrap(), Some((frame, bytes.len())));
        assert_eq!(Frame::parse(&bytes[..bytes.len() - 1]).unwrap(), None);
    }
}

/// Property tests: no input makes the parsers panic, and what the encoder writes
/// the parser reads back, however it is split.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn frame() -> impl Strategy<Value = Frame> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,12}".prop_map(Frame::Simple),
            "[a-zA-Z0-9 ]{0,12}".prop_map(Frame::Error),
            any::<i64>().prop_map(Frame::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Frame::Bulk),
            Just(Frame::Null),
            Just(Frame::NullArray),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Frame::Array)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&bytes);
            let _ = Frame::parse(&bytes);
        }

        #[test]
        fn protocol_shaped_garbage_never_panics(parts in proptest::collection::vec(
            prop_oneof![
                Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()), Just(b"-1".to_vec()),
                Just(b"3".to_vec()), Just(b"99999999999999999999".to_vec()), Just(b"\"".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..4),
            ], 0..40)) {
            let bytes: Vec<u8> = parts.concat();
            let _ = parse_request(&bytes);
            let _ = Frame::parse(&bytes);
        }

        #[test]
        fn requests_round_trip_at_any_split(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..8), cut in 0usize..400) {
            let bytes = Frame::Array(args.iter().map(|a| Frame::Bulk(a.clone())).collect()).to_bytes();
            let cut = cut.min(bytes.len());
            if cut < bytes.len() {
                prop_assert_eq!(parse_request(&bytes[..cut]).unwrap(), None);
            }
            prop_assert_eq!(parse_request(&bytes).unwrap(), Some((args, bytes.len())));
        }

        #[test]
        fn replies_round_trip(f in frame()) {
            let bytes = f.to_bytes();
            prop_assert_eq!(Frame::parse(&bytes).unwrap(), Some((f, bytes.len())));
        }
    }
}
