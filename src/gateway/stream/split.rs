//! Incremental splitter for client-streaming request bodies.
//!
//! A client-streaming RPC exposed over REST receives its messages in one HTTP body, in either of
//! two framings, chosen by the first byte that is not whitespace (a leading UTF-8 byte order mark
//! is skipped):
//!
//! - `[` — a JSON array of message objects: `[{...}, {...}]`. Whitespace may appear between any
//!   two tokens; `[]` is an empty stream. Every element must be an object, elements are separated
//!   by exactly one comma (no trailing comma), and only whitespace may follow the closing `]`.
//! - `{` — newline-delimited or simply concatenated JSON objects: `{...}\n{...}\n`. Only
//!   whitespace (spaces, tabs, `\n`, `\r\n`, blank lines) may appear between objects.
//!
//! An empty or whitespace-only body (optionally with a BOM) is accepted as an empty stream, so a
//! client with nothing to send is not forced to invent a framing.
//!
//! The body arrives in arbitrary chunks and each message must reach the upstream call as soon as
//! its last byte has arrived, without holding the whole body in memory — bodies of long-lived
//! streams are unbounded. So the scanner is a byte-level state machine that survives chunk
//! boundaries anywhere (inside a string, an escape, a multi-byte character or a number) and keeps
//! only the bytes of the message in progress.
//!
//! It deliberately does not parse values: each emitted piece is handed to serde, which validates
//! it properly (UTF-8, literals, numbers, control characters). The scanner tracks only what it
//! needs to find message boundaries — strings, escapes, bracket nesting — and rejects malformed
//! framing and abusive messages (too deep, too large) as early as possible, before the rest of the
//! body is read.
//!
//! The nesting depth counts brackets within a message; the enclosing framing array does not
//! count, because serde sees each message on its own. Message sizes count the bytes from the
//! opening `{` to the closing `}` inclusive.
//!
//! Errors carry the absolute byte offset of the offending byte in the whole body; an error found
//! by [`JsonSplitter::finish`] points at the end of the body, where the missing bytes would have
//! been. After an error the splitter is poisoned and keeps returning that error. Messages that a
//! failing chunk completed before its error are not returned: the body is rejected as a whole.

use bytes::{Bytes, BytesMut};

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Bounds on what a single message may cost the gateway before serde ever sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    /// Largest accepted message, in bytes from its `{` to its `}` inclusive.
    pub max_message_bytes: usize,
    /// Deepest accepted nesting of `{`/`[` within a message; the message object itself is depth 1.
    pub max_depth: usize,
    /// Only the JSON-array framing is accepted (a body declared `application/json` is one JSON value).
    pub array_only: bool,
}

/// A malformed streaming body.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid streaming body at byte {offset}: {message}")]
pub struct SplitError {
    /// Byte offset in the whole body of the offending byte (the body length for a truncated body).
    pub offset: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Array,
    Ndjson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Only whitespace, or part of a byte order mark, so far.
    Start,
    /// Just after `[`: an element or `]`.
    ArrayOpen,
    /// Just after `,`: an element is required.
    ArrayAfterComma,
    /// After an element: `,` or `]`.
    ArrayAfterElement,
    ArrayClosed,
    /// Between newline-delimited messages.
    NdjsonBetween,
    InMessage(Framing),
}

/// Splits a streaming request body into the raw bytes of its messages; see the module docs.
#[derive(Debug)]
pub struct JsonSplitter {
    limits: SplitLimits,
    state: State,
    /// Absolute offset of the next byte to be scanned.
    offset: usize,
    /// How many bytes of a byte order mark have been matched at the very start of the body.
    bom_matched: usize,
    emitted: usize,
    /// The message in progress; split off (not copied) when it completes.
    buf: BytesMut,
    /// The closer expected for each open bracket of the message in progress, so `{]` is caught
    /// here rather than after buffering the whole message.
    closers: Vec<u8>,
    in_string: bool,
    escaped: bool,
    failed: Option<SplitError>,
    finished: bool,
}

impl JsonSplitter {
    pub fn new(limits: SplitLimits) -> Self {
        Self {
            limits,
            state: State::Start,
            offset: 0,
            bom_matched: 0,
            emitted: 0,
            buf: BytesMut::new(),
            closers: Vec::new(),
            in_string: false,
            escaped: false,
            failed: None,
            finished: false,
        }
    }

    /// Feeds the next chunk; returns the messages completed by it, in order (each is the exact
    /// bytes of one JSON object, whitespace around it trimmed).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, SplitError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.finished {
            return self.fail(error(self.offset, "data pushed after the end of the body".to_owned()));
        }
        let mut completed = Vec::new();
        match self.scan(chunk, &mut completed) {
            Ok(()) => Ok(completed),
            Err(err) => self.fail(err),
        }
    }

    /// End of the body: Ok if the input ended cleanly (a closed array, NDJSON ending between
    /// messages, or an empty body), otherwise an error (unclosed array, message cut off).
    pub fn finish(&mut self) -> Result<(), SplitError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.finished = true;
        let at = self.offset;
        let result = match self.state {
            State::Start if self.bom_matched == 0 || self.bom_matched == BOM.len() => Ok(()),
            State::Start => Err(error(0, "incomplete byte order mark".to_owned())),
            State::ArrayClosed | State::NdjsonBetween => Ok(()),
            State::ArrayOpen | State::ArrayAfterComma | State::ArrayAfterElement => {
                Err(error(at, "body ended before the array was closed with ']'".to_owned()))
            }
            State::InMessage(_) => Err(error(at, format!("body ended in the middle of message {}", self.emitted))),
        };
        result.or_else(|err| self.fail(err))
    }

    /// How many messages have been emitted so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }

    fn fail<T>(&mut self, err: SplitError) -> Result<T, SplitError> {
        self.failed = Some(err.clone());
        Err(err)
    }

    fn scan(&mut self, chunk: &[u8], completed: &mut Vec<Bytes>) -> Result<(), SplitError> {
        let mut rest = chunk;
        while let Some(&byte) = rest.first() {
            if let State::InMessage(framing) = self.state {
                let (used, done) = self.scan_message(rest)?;
                rest = &rest[used..];
                self.offset += used;
                if done {
                    completed.push(self.buf.split().freeze());
                    self.emitted += 1;
                    self.state = match framing {
                        Framing::Array => State::ArrayAfterElement,
                        Framing::Ndjson => State::NdjsonBetween,
                    };
                }
            } else if self.step_between(byte)? {
                rest = &rest[1..];
                self.offset += 1;
            }
        }
        Ok(())
    }

    /// Handles one byte outside any message. Returns false when the byte opens a message and must
    /// be scanned again as its first byte.
    fn step_between(&mut self, byte: u8) -> Result<bool, SplitError> {
        let at = self.offset;
        if self.state == State::Start {
            // Only a BOM at the very start of the body; partial or misplaced ones are garbage.
            if at < BOM.len() && self.bom_matched == at && byte == BOM[at] {
                self.bom_matched += 1;
                return Ok(true);
            }
            if self.bom_matched != 0 && self.bom_matched < BOM.len() {
                return Err(error(0, "incomplete byte order mark".to_owned()));
            }
        }
        if is_whitespace(byte) {
            return Ok(true);
        }
        match (self.state, byte) {
            (State::Start, b'[') => self.state = State::ArrayOpen,
            (State::Start, b'{') if self.limits.array_only => {
                return Err(error(
                    at,
                    "an application/json body is a JSON array of messages; send newline-delimited objects as \
                     application/x-ndjson"
                        .to_owned(),
                ));
            }
            (State::Start | State::NdjsonBetween, b'{') => {
                self.state = State::InMessage(Framing::Ndjson);
                return Ok(false);
            }
            (State::Start, _) => {
                return Err(error(
                    at,
                    format!(
                        "expected a JSON array of messages or newline-delimited JSON objects, found {}",
                        describe_byte(byte)
                    ),
                ));
            }
            (State::ArrayOpen | State::ArrayAfterComma, b'{') => {
                self.state = State::InMessage(Framing::Array);
                return Ok(false);
            }
            (State::ArrayOpen, b']') => self.state = State::ArrayClosed,
            (State::ArrayAfterComma, b']') => {
                return Err(error(at, "trailing comma before ']' in the array of messages".to_owned()));
            }
            (State::ArrayOpen | State::ArrayAfterComma, _) => {
                return Err(error(
                    at,
                    format!("array element {} must be a JSON object, found {}", self.emitted, describe_value(byte)),
                ));
            }
            (State::ArrayAfterElement, b',') => self.state = State::ArrayAfterComma,
            (State::ArrayAfterElement, b']') => self.state = State::ArrayClosed,
            (State::ArrayAfterElement, _) => {
                return Err(error(
                    at,
                    format!(
                        "expected ',' or ']' after array element {}, found {}",
                        self.emitted.saturating_sub(1),
                        describe_byte(byte)
                    ),
                ));
            }
            (State::ArrayClosed, _) => {
                return Err(error(at, format!("unexpected {} after the closing ']'", describe_byte(byte))));
            }
            (State::NdjsonBetween, _) => {
                return Err(error(
                    at,
                    format!(
                        "expected whitespace or '{{' between newline-delimited messages, found {}",
                        describe_byte(byte)
                    ),
                ));
            }
            (State::InMessage(_), _) => return Ok(false),
        }
        Ok(true)
    }

    /// Scans message bytes from `data` (whose first byte is at `self.offset`), buffering them in
    /// one copy. Returns how many bytes belong to the message and whether it is now complete.
    fn scan_message(&mut self, data: &[u8]) -> Result<(usize, bool), SplitError> {
        let held = self.buf.len();
        for (i, &byte) in data.iter().enumerate() {
            let at = self.offset + i;
            // Checked per byte so an oversized message is refused before its end arrives.
            if held + i >= self.limits.max_message_bytes {
                return Err(error(
                    at,
                    format!(
                        "message {} exceeds the maximum size of {} bytes",
                        self.emitted, self.limits.max_message_bytes
                    ),
                ));
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.closers.len() >= self.limits.max_depth {
                        return Err(error(
                            at,
                            format!(
                                "message {} exceeds the maximum nesting depth of {}",
                                self.emitted, self.limits.max_depth
                            ),
                        ));
                    }
                    self.closers.push(if byte == b'{' { b'}' } else { b']' });
                }
                b'}' | b']' => {
                    match self.closers.pop() {
                        Some(expected) if expected == byte => {}
                        Some(expected) => {
                            return Err(error(
                                at,
                                format!(
                                    "mismatched '{}' in message {}, expected '{}'",
                                    byte as char, self.emitted, expected as char
                                ),
                            ));
                        }
                        // The opening '{' is always scanned first, so this cannot happen; treat
                        // it as malformed input rather than panicking.
                        None => {
                            return Err(error(
                                at,
                                format!("unexpected '{}' in message {}", byte as char, self.emitted),
                            ));
                        }
                    }
                    if self.closers.is_empty() {
                        self.buf.extend_from_slice(&data[..=i]);
                        return Ok((i + 1, true));
                    }
                }
                _ => {}
            }
        }
        self.buf.extend_from_slice(data);
        Ok((data.len(), false))
    }
}

fn error(offset: usize, message: String) -> SplitError {
    SplitError { offset, message }
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Names what a non-object array element starts, so the client learns what it sent.
fn describe_value(byte: u8) -> String {
    match byte {
        b'"' => "a string".to_owned(),
        b'[' => "an array".to_owned(),
        b'-' | b'0'..=b'9' => "a number".to_owned(),
        _ => describe_byte(byte),
    }
}

fn describe_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() { format!("'{}'", byte as char) } else { format!("byte 0x{byte:02x}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn an_array_only_splitter_refuses_objects_at_the_top() {
        let limits = SplitLimits { array_only: true, ..LIMITS };
        let mut splitter = JsonSplitter::new(limits);
        assert!(splitter.push(b" {\"a\":1}").is_err_and(|e| e.offset == 1 && e.message.contains("JSON array")));
        let mut splitter = JsonSplitter::new(limits);
        assert_eq!(splitter.push(b"[{\"a\":1}]").map(|pieces| pieces.len()), Ok(1));
        assert_eq!(splitter.finish(), Ok(()));
    }

    const LIMITS: SplitLimits = SplitLimits { max_message_bytes: 1 << 20, max_depth: 64, array_only: false };

    /// Every chunking the tests feed a body in: whole, every two-way split, one byte at a time,
    /// and a few fixed sizes that cut bodies at unaligned places.
    fn chunkings(body: &[u8]) -> Vec<(String, Vec<&[u8]>)> {
        let mut all = vec![("whole".to_owned(), vec![body])];
        for at in 0..=body.len() {
            all.push((format!("split at {at}"), vec![&body[..at], &body[at..]]));
        }
        all.push(("bytewise".to_owned(), body.chunks(1).collect()));
        for size in [2, 3, 7] {
            all.push((format!("chunks of {size}"), body.chunks(size).collect()));
        }
        all
    }

    /// Feeds the chunks and finishes; on error also says whether `finish` (rather than `push`)
    /// reported it.
    fn run(limits: SplitLimits, chunks: &[&[u8]]) -> Result<Vec<Bytes>, (SplitError, bool)> {
        let mut splitter = JsonSplitter::new(limits);
        let mut out = Vec::new();
        for chunk in chunks {
            let completed = splitter.push(chunk).map_err(|e| (e, false))?;
            out.extend(completed);
            assert_eq!(splitter.emitted(), out.len());
        }
        splitter.finish().map_err(|e| (e, true))?;
        Ok(out)
    }

    fn good_cases() -> Vec<(&'static str, Vec<u8>, Vec<Value>)> {
        let pretty_ndjson = "{\n  \"a\": 1,\n  \"b\": {\n    \"c\": [1, 2]\n  }\n}\n{\n  \"d\": \"x\"\n}\n";
        let pretty_array = "[\n  {\n    \"id\": 1,\n    \"tags\": [\"x\", \"y\"]\n  },\n  {\n    \"id\": 2\n  }\n]\n";
        vec![
            ("array of two", br#"[{"a":1},{"b":2}]"#.to_vec(), vec![json!({"a": 1}), json!({"b": 2})]),
            (
                "array with whitespace everywhere",
                b" \n [ \t{\"a\" : 1 } ,\r\n {\"b\":[1, 2]}\n ] \n\n".to_vec(),
                vec![json!({"a": 1}), json!({"b": [1, 2]})],
            ),
            ("empty array", b"[]".to_vec(), vec![]),
            ("empty array with whitespace", b" [ \n ] ".to_vec(), vec![]),
            ("whitespace after closing bracket", b"[{\"a\":1}]  \r\n\t ".to_vec(), vec![json!({"a": 1})]),
            (
                "structural characters inside strings",
                br#"[{"s":"{}[],:"},{"t":"]}","u":"[{"}]"#.to_vec(),
                vec![json!({"s": "{}[],:"}), json!({"t": "]}", "u": "[{"})],
            ),
            (
                "escaped quotes and backslashes",
                br#"{"q":"say \"hi\" {"} {"p":"C:\\dir\\"} {"e":"\\\"}","k\"}":[]}"#.to_vec(),
                vec![json!({"q": "say \"hi\" {"}), json!({"p": "C:\\dir\\"}), json!({"e": "\\\"}", "k\"}": []})],
            ),
            (
                "multi-byte utf-8",
                "[{\"u\":\"héllo wörld — 日本語 🎉\"},{\"ключ\":\"}\"}]".as_bytes().to_vec(),
                vec![json!({"u": "héllo wörld — 日本語 🎉"}), json!({"ключ": "}"})],
            ),
            (
                "unicode escapes",
                br#"{"u":"\u00e9\ud83c\udf89\u007b\u005d\u0022"}"#.to_vec(),
                vec![json!({"u": "é🎉{]\""})],
            ),
            (
                "nested objects and arrays",
                br#"[{"a":{"b":{"c":[1,[2,{"d":[]}]]}},"e":[{},[]]},{}]"#.to_vec(),
                vec![json!({"a": {"b": {"c": [1, [2, {"d": []}]]}}, "e": [{}, []]}), json!({})],
            ),
            (
                "numbers",
                br#"[{"n":-12.5e+3,"m":0,"big":12345678901234567890},{"f":0.25}]"#.to_vec(),
                vec![json!({"n": -12500.0, "m": 0, "big": 12345678901234567890u64}), json!({"f": 0.25})],
            ),
            (
                "pretty-printed ndjson",
                pretty_ndjson.as_bytes().to_vec(),
                vec![json!({"a": 1, "b": {"c": [1, 2]}}), json!({"d": "x"})],
            ),
            (
                "pretty-printed array",
                pretty_array.as_bytes().to_vec(),
                vec![json!({"id": 1, "tags": ["x", "y"]}), json!({"id": 2})],
            ),
            ("crlf ndjson", b"{\"a\":1}\r\n{\"b\":2}\r\n".to_vec(), vec![json!({"a": 1}), json!({"b": 2})]),
            ("blank lines", b"\n\n{\"a\":1}\n\n\n{\"b\":2}\n  \n".to_vec(), vec![json!({"a": 1}), json!({"b": 2})]),
            ("concatenated objects", br#"{"a":1}{"b":2}"#.to_vec(), vec![json!({"a": 1}), json!({"b": 2})]),
            ("ndjson without final newline", b"{\"a\":1}\n{\"b\":2}".to_vec(), vec![json!({"a": 1}), json!({"b": 2})]),
            ("bom before array", b"\xEF\xBB\xBF[{\"a\":1}]".to_vec(), vec![json!({"a": 1})]),
            ("bom before ndjson", b"\xEF\xBB\xBF{\"a\":1}\n{}\n".to_vec(), vec![json!({"a": 1}), json!({})]),
            ("empty body", b"".to_vec(), vec![]),
            ("whitespace-only body", b" \r\n\t\n".to_vec(), vec![]),
            ("bom-only body", b"\xEF\xBB\xBF".to_vec(), vec![]),
        ]
    }

    #[test]
    fn good_bodies_split_the_same_way_under_every_chunking() {
        for (name, body, expected) in good_cases() {
            let mut reference: Option<Vec<Bytes>> = None;
            for (how, chunks) in chunkings(&body) {
                let pieces =
                    run(LIMITS, &chunks).unwrap_or_else(|(e, _)| panic!("{name} ({how}): unexpected error: {e}"));
                let values: Vec<Value> = pieces
                    .iter()
                    .map(|piece| {
                        assert_eq!(piece.first(), Some(&b'{'), "{name} ({how}): piece not trimmed: {piece:?}");
                        assert_eq!(piece.last(), Some(&b'}'), "{name} ({how}): piece not trimmed: {piece:?}");
                        serde_json::from_slice(piece)
                            .unwrap_or_else(|e| panic!("{name} ({how}): piece {piece:?} is not JSON: {e}"))
                    })
                    .collect();
                assert_eq!(values, expected, "{name} ({how})");
                match &reference {
                    Some(first) => assert_eq!(&pieces, first, "{name} ({how}): bytes differ from whole feed"),
                    None => reference = Some(pieces),
                }
            }
        }
    }

    #[test]
    fn pieces_are_the_exact_bytes_of_each_object() {
        let body = b"[ {\"a\" : [1, 2] } ,\n\t{ \"b\":\"x\" }\n]";
        let pieces = run(LIMITS, &[body]).expect("valid body");
        assert_eq!(pieces, vec![Bytes::from_static(b"{\"a\" : [1, 2] }"), Bytes::from_static(b"{ \"b\":\"x\" }")]);
    }

    struct Bad {
        name: &'static str,
        body: &'static [u8],
        limits: SplitLimits,
        offset: usize,
        contains: &'static str,
        at_finish: bool,
    }

    fn bad(name: &'static str, body: &'static [u8], offset: usize, contains: &'static str) -> Bad {
        Bad { name, body, limits: LIMITS, offset, contains, at_finish: false }
    }

    fn bad_cases() -> Vec<Bad> {
        let deep = SplitLimits { max_message_bytes: 1 << 20, max_depth: 3, array_only: false };
        let small = SplitLimits { max_message_bytes: 16, max_depth: 64, array_only: false };
        vec![
            bad("number element", br#"[{"a":1}, 42]"#, 10, "array element 1 must be a JSON object, found a number"),
            bad("string element", br#"["x"]"#, 1, "array element 0 must be a JSON object, found a string"),
            bad("array element", b"[{},[]]", 4, "array element 1 must be a JSON object, found an array"),
            bad("literal element", b"[null]", 1, "array element 0 must be a JSON object, found 'n'"),
            bad("leading comma", b"[,{}]", 1, "array element 0 must be a JSON object, found ','"),
            bad("trailing comma", br#"[{"a":1},]"#, 9, "trailing comma"),
            bad("double comma", b"[{},,{}]", 4, "array element 1 must be a JSON object, found ','"),
            bad("missing comma", br#"[{"a":1} {"b":2}]"#, 9, "expected ',' or ']' after array element 0, found '{'"),
            bad("garbage after array", br#"[{"a":1}] x"#, 10, "unexpected 'x' after the closing ']'"),
            bad("second array", b"[{}][{}]", 4, "unexpected '[' after the closing ']'"),
            Bad {
                at_finish: true,
                ..bad("unclosed array after element", br#"[{"a":1}"#, 8, "before the array was closed")
            },
            Bad {
                at_finish: true,
                ..bad("unclosed array after comma", br#"[{"a":1},"#, 9, "before the array was closed")
            },
            Bad { at_finish: true, ..bad("unclosed empty array", b" [ ", 3, "before the array was closed") },
            Bad {
                at_finish: true,
                ..bad("cut-off ndjson object", b"{\"a\":1}\n{\"b\":\"x", 15, "ended in the middle of message 1")
            },
            Bad { at_finish: true, ..bad("cut-off array element", br#"[{"a":[1,2"#, 10, "in the middle of message 0") },
            Bad { at_finish: true, ..bad("cut-off inside escape", br#"{"a":"\"#, 7, "in the middle of message 0") },
            bad("mismatched closer", br#"{"a":[1}"#, 7, "mismatched '}' in message 0, expected ']'"),
            bad("mismatched closer at top", b"[{}, {]", 6, "mismatched ']' in message 1, expected '}'"),
            Bad {
                limits: deep,
                ..bad("too deep objects", br#"{"a":{"b":{"c":{"d":1}}}}"#, 15, "maximum nesting depth of 3")
            },
            Bad {
                limits: deep,
                ..bad("too deep arrays", br#"[{"a":[[[1]]]}]"#, 8, "message 0 exceeds the maximum nesting depth of 3")
            },
            // The second message never ends: the error must come from `push`, not `finish`.
            Bad {
                limits: small,
                ..bad(
                    "too large",
                    br#"[{"a":1},{"data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"#,
                    25,
                    "message 1 exceeds the maximum size of 16 bytes",
                )
            },
            bad(
                "leading garbage",
                b"x[{}]",
                0,
                "expected a JSON array of messages or newline-delimited JSON objects, found 'x'",
            ),
            bad("leading scalar after whitespace", b" \n  \"a\"", 4, "expected a JSON array of messages"),
            bad("partial bom", b"\xEF\xBB{}", 0, "incomplete byte order mark"),
            Bad { at_finish: true, ..bad("truncated bom", b"\xEF\xBB", 0, "incomplete byte order mark") },
            bad("bom after whitespace", b" \xEF\xBB\xBF{}", 1, "found byte 0xef"),
            bad(
                "comma between ndjson objects",
                br#"{"a":1},{"b":2}"#,
                7,
                "between newline-delimited messages, found ','",
            ),
            bad("stray bracket in ndjson", b"{\"a\":1}\n]", 8, "found ']'"),
            bad("array after ndjson object", b"{}\n[{}]", 3, "found '['"),
        ]
    }

    #[test]
    fn bad_bodies_fail_at_the_same_offset_under_every_chunking() {
        for case in bad_cases() {
            for (how, chunks) in chunkings(case.body) {
                let name = case.name;
                let (err, at_finish) = match run(case.limits, &chunks) {
                    Ok(pieces) => panic!("{name} ({how}): accepted, produced {pieces:?}"),
                    Err(failure) => failure,
                };
                assert_eq!(err.offset, case.offset, "{name} ({how}): {err}");
                assert!(err.message.contains(case.contains), "{name} ({how}): {err}");
                assert_eq!(at_finish, case.at_finish, "{name} ({how}): reported by finish: {at_finish}");
            }
        }
    }

    #[test]
    fn messages_are_emitted_by_the_chunk_that_completes_them() {
        let mut splitter = JsonSplitter::new(LIMITS);
        assert_eq!(splitter.push(b"[{\"a\":1},{\"b\"").expect("valid"), vec![Bytes::from_static(b"{\"a\":1}")]);
        assert_eq!(splitter.emitted(), 1);
        assert_eq!(splitter.push(b":\"}").expect("valid"), Vec::<Bytes>::new());
        assert_eq!(splitter.push(b"\"}").expect("valid"), vec![Bytes::from_static(b"{\"b\":\"}\"}")]);
        assert_eq!(splitter.emitted(), 2);
        assert_eq!(splitter.push(b"]").expect("valid"), Vec::<Bytes>::new());
        assert_eq!(splitter.finish(), Ok(()));
    }

    #[test]
    fn only_the_message_in_progress_is_held() {
        // A limit far below the whitespace volume: whitespace between messages must not count.
        let limits = SplitLimits { max_message_bytes: 8, max_depth: 4, array_only: false };
        let mut splitter = JsonSplitter::new(limits);
        assert_eq!(splitter.push(b"{\"a\":1}").expect("valid").len(), 1);
        let blank = vec![b'\n'; 64 * 1024];
        for _ in 0..16 {
            assert!(splitter.push(&blank).expect("whitespace is valid").is_empty());
            assert!(splitter.buf.is_empty());
        }
        assert!(splitter.push(b"  {\"b\"").expect("valid").is_empty());
        assert_eq!(&splitter.buf[..], b"{\"b\"");
        assert_eq!(splitter.push(b":2}\n").expect("valid"), vec![Bytes::from_static(b"{\"b\":2}")]);
        assert!(splitter.buf.is_empty());
        assert_eq!(splitter.finish(), Ok(()));
    }

    #[test]
    fn limits_are_inclusive() {
        // Exactly 16 bytes and exactly depth 3 are accepted.
        let limits = SplitLimits { max_message_bytes: 16, max_depth: 3, array_only: false };
        let body = br#"[{"a":{"b":[1]}}, {"xyz":"012345"}]"#;
        let pieces = run(limits, &[body]).expect("within limits");
        assert_eq!(pieces.iter().map(Bytes::len).collect::<Vec<_>>(), vec![15, 16]);

        let over = br#"{"xyz":"0123456"}"#;
        let (err, at_finish) = run(limits, &[over]).expect_err("one byte over");
        assert_eq!((err.offset, at_finish), (16, false));
    }

    #[test]
    fn errors_are_sticky() {
        let mut splitter = JsonSplitter::new(LIMITS);
        let err = splitter.push(b"{}\n,").expect_err("comma between ndjson messages");
        assert_eq!(err.offset, 3);
        assert_eq!(splitter.push(b"{}"), Err(err.clone()));
        assert_eq!(splitter.finish(), Err(err));
    }

    #[test]
    fn empty_body_is_an_empty_stream() {
        let mut splitter = JsonSplitter::new(LIMITS);
        assert_eq!(splitter.finish(), Ok(()));
        assert_eq!(splitter.emitted(), 0);
    }

    #[test]
    fn push_after_finish_is_rejected() {
        let mut splitter = JsonSplitter::new(LIMITS);
        assert_eq!(splitter.push(b"[]").expect("valid"), Vec::<Bytes>::new());
        assert_eq!(splitter.finish(), Ok(()));
        let err = splitter.push(b" ").expect_err("after finish");
        assert_eq!(err.offset, 2);
    }

    #[test]
    fn error_display() {
        let err = SplitError { offset: 42, message: "trailing comma".to_owned() };
        assert_eq!(err.to_string(), "invalid streaming body at byte 42: trailing comma");
    }
}

/// Property tests: generated streams in both framings, cut into chunks anywhere, against serde_json.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    use super::{JsonSplitter, SplitLimits};

    const LIMITS: SplitLimits = SplitLimits { max_message_bytes: 1 << 20, max_depth: 64, array_only: false };

    fn object() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            // Strings with the characters that matter to a scanner: quotes, escapes, brackets, non-ASCII.
            "[a-z\"\\\\{}\\[\\],: é€\n]{0,8}".prop_map(Value::String),
        ];
        let value = leaf.prop_recursive(3, 32, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[a-z\"{]{1,4}", value, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>()))
    }

    /// Splits `body` fed in chunks cut at `cuts` (positions modulo the length).
    fn split(body: &[u8], cuts: &[usize]) -> Result<Vec<Value>, String> {
        let mut positions: Vec<usize> = cuts.iter().map(|cut| cut % (body.len() + 1)).collect();
        positions.push(0);
        positions.push(body.len());
        positions.sort_unstable();
        positions.dedup();
        let mut splitter = JsonSplitter::new(LIMITS);
        let mut pieces = Vec::new();
        for window in positions.windows(2) {
            pieces.extend(splitter.push(&body[window[0]..window[1]]).map_err(|e| e.to_string())?);
        }
        splitter.finish().map_err(|e| e.to_string())?;
        pieces.iter().map(|piece| serde_json::from_slice(piece).map_err(|e| e.to_string())).collect()
    }

    proptest! {
        #[test]
        fn every_message_comes_out_whole_whatever_the_chunks(
            messages in prop::collection::vec(object(), 0..5),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            ndjson in any::<bool>(),
        ) {
            let body = if ndjson {
                messages.iter().map(|m| format!("{m}\n")).collect::<String>()
            } else {
                serde_json::to_string_pretty(&Value::Array(messages.clone())).expect("serialises")
            };
            prop_assert_eq!(split(body.as_bytes(), &cuts), Ok(messages));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
            // Whatever comes out parses as JSON: the scanner hands serde only whole objects.
            if let Ok(values) = split(&bytes, &cuts) {
                prop_assert!(values.iter().all(Value::is_object));
            }
        }
    }
}
