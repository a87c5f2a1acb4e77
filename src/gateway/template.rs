//! `google.api.http` path templates: parsing, matching and ordering.
//!
//! This is the HttpRule template language shared by Google APIs, grpc-gateway and Envoy's gRPC-JSON
//! transcoder. The gateway parses every template once at start-up (a bad one fails start-up, and the
//! error names it) and matches request paths against the parsed form. Everything here is pure.
//!
//! # Grammar
//!
//! ```text
//! Template  = "/" Segments [ Verb ] ;
//! Segments  = Segment { "/" Segment } ;
//! Segment   = "*" | "**" | LITERAL | Variable ;
//! Variable  = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb      = ":" LITERAL ;
//! IDENT     = [A-Za-z_][A-Za-z0-9_]* ;
//! ```
//!
//! - `*` matches exactly one path segment; `**` matches zero or more and must be the last segment of
//!   the template (it may close a variable: `/v1/{name=shelves/**}`).
//! - `{var}` is shorthand for `{var=*}`. Variables do not nest, and a field path may be bound only once.
//! - A LITERAL is one or more RFC 3986 path characters: unreserved (`A-Z a-z 0-9 - . _ ~`),
//!   pct-encoded triplets (`%` and two hex digits), sub-delims other than `*` (`! $ & ' ( ) + , ; =`),
//!   `@`, and `:`. It never contains `/`, `{`, `}` or `*`.
//! - The verb starts at the first `:` of the template's final segment, when that segment is not inside
//!   a variable; equivalently, at a `:` after which no `/` follows. So `:` is accepted inside any literal
//!   that is not the final top-level segment (`/v1/a:b/c`, `/v1/{name=x:y}`), while in the final
//!   segment it always starts the verb (`/v1/users:watch`, `/v1/{name=projects/*}:cancel`). The verb
//!   itself is a LITERAL without `:`, so `/v1/a:b:c` is rejected rather than guessing which colon
//!   was meant.
//!
//! # Matching
//!
//! A request path (raw, still percent-encoded, without the query string) matches when:
//!
//! - It starts with `/`; the rest is split on `/`. The root path `/` has no segments at all (so only
//!   `/**` matches it). An empty segment (`//`, or a trailing `/`) matches nothing, not even `**`:
//!   it is almost always a client bug, and letting `**` absorb it would bind values ending in `/`.
//! - If the template has a verb, the last segment must end with `:verb`, which is cut off before the
//!   segments are compared; what remains of that segment must not be empty. Without a verb the last
//!   segment is compared whole, colon included, so `/v1/users/{id}` matches `/v1/users/abc:def`.
//! - Literals and the verb compare byte for byte with the raw segment: case-sensitive, no decoding.
//! - Each variable binds the text of the segments it covers. A single-segment variable's value is
//!   fully percent-decoded (`%2F` becomes `/`). A multi-segment variable (more than one segment, or a
//!   `**`) binds its segments joined with `/`, percent-decoded except `%2F`/`%2f`, which stay encoded so
//!   that an encoded slash is still distinguishable from a separator (HttpRule's reserved expansion).
//!   Invalid percent-encoding or a value that decodes to invalid UTF-8 means no match. Segments matched
//!   by an unbound `*` or `**` are not decoded, and so are not checked.
//!
//! # Ordering and conflicts
//!
//! [`PathTemplate::cmp_specificity`] orders a route table so that the more specific template is tried
//! first, and [`PathTemplate::same_shape`] finds two templates that would match exactly the same paths.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// A parsed `google.api.http` path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// Shared, so that metrics and spans label a route with it without copying it per request.
    text: Arc<str>,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Wildcard,
    DoubleWildcard,
}

/// A `{field.path=pattern}` binding in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The request message field the value goes to, one identifier per element (`user.id` → `["user", "id"]`).
    pub field_path: Vec<String>,
    /// The template segments this variable's pattern covers.
    segments: Range<usize>,
    multi_segment: bool,
}

impl Variable {
    /// The variable's name in an OpenAPI path: the field path joined with `_` (`user.id` → `user_id`). A dot
    /// is legal in OpenAPI but breaks the URI templating of tools such as schemathesis; the URL template the
    /// gateway matches is the same either way.
    pub fn openapi_name(&self) -> String {
        self.field_path.join("_")
    }

    /// True when the pattern has more than one segment or a `**`, so the value may contain `/` (and keeps
    /// `%2F` encoded).
    pub fn is_multi_segment(&self) -> bool {
        self.multi_segment
    }
}

/// The result of a successful [`PathTemplate::matches`]: the decoded value of each variable, in template order.
/// The field paths stay with the template ([`PathTemplate::variables`]), so a match allocates only the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMatch {
    pub values: Vec<String>,
}

impl PathMatch {
    /// Each variable's field path with its value, for the template this match came from.
    pub fn bindings<'a>(&'a self, template: &'a PathTemplate) -> impl Iterator<Item = (&'a [String], &'a str)> {
        template.variables().iter().map(|v| v.field_path.as_slice()).zip(self.values.iter().map(String::as_str))
    }
}

/// A template that does not follow the grammar. Displays as `template "/v1/{id": unclosed variable at byte 4`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template:?}: {kind} at byte {offset}")]
pub struct TemplateError {
    template: String,
    kind: TemplateErrorKind,
    offset: usize,
}

impl TemplateError {
    /// The template text that failed to parse.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// What is wrong.
    pub fn kind(&self) -> &TemplateErrorKind {
        &self.kind
    }

    /// The byte offset in the template where the problem is.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateErrorKind {
    #[error("must start with '/'")]
    MissingLeadingSlash,
    #[error("empty segment")]
    EmptySegment,
    #[error("trailing slash")]
    TrailingSlash,
    #[error("'**' must be the last segment")]
    DoubleWildcardNotLast,
    #[error("'*' is only allowed as a whole segment ('*' or '**')")]
    PartialWildcard,
    #[error("nested variable")]
    NestedVariable,
    #[error("unclosed variable")]
    UnclosedVariable,
    #[error("'}}' without a matching '{{'")]
    UnmatchedCloseBrace,
    #[error("variable must be a whole segment")]
    VariableNotWholeSegment,
    #[error("invalid identifier in field path")]
    InvalidIdentifier,
    #[error("field path {0:?} is bound more than once")]
    DuplicateFieldPath(String),
    #[error("empty verb")]
    EmptyVerb,
    #[error("invalid character {0:?}")]
    InvalidCharacter(char),
    #[error("invalid percent-encoding")]
    InvalidPercentEncoding,
}

impl PathTemplate {
    /// Parses a template such as `/v1/{name=projects/*/topics/*}:publish`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        Parser::new(template).template()
    }

    /// The original template text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The original template text, as a label to share.
    pub fn label(&self) -> &Arc<str> {
        &self.text
    }

    /// The variables, in template order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The custom verb (`watch` in `/v1/users:watch`), if any.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// Matches an HTTP request path (raw, still percent-encoded, without the query string).
    pub fn matches(&self, path: &str) -> Option<PathMatch> {
        let rest = self.strip_verb(path.strip_prefix('/')?)?;
        // Checking the shape first keeps failed matches, the common case in a route table, allocation-free.
        if !self.segments_match(rest) {
            return None;
        }
        let path_segment_count = if rest.is_empty() { 0 } else { slashes(rest).count() + 1 };
        let mut values = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            // Template segments map one-to-one onto path segments, except the final `**`, which takes the
            // rest; a variable containing it therefore ends where the path ends.
            let covers_double_wildcard =
                variable.segments.end == self.segments.len() && self.ends_with_double_wildcard();
            let end = if covers_double_wildcard { path_segment_count } else { variable.segments.end };
            let raw = segment_slice(rest, variable.segments.start, end);
            let value = percent_decode(raw, variable.multi_segment)?;
            values.push(value);
        }
        Some(PathMatch { values })
    }

    /// Whether `path` has this template's shape (literals, segment count, verb), without decoding any value: the
    /// cheap half of [`Self::matches`].
    pub fn fits(&self, path: &str) -> bool {
        path.strip_prefix('/').and_then(|rest| self.strip_verb(rest)).is_some_and(|rest| self.segments_match(rest))
    }

    /// Two templates that would match exactly the same paths (same literals, wildcards and verb, whatever the
    /// variable names): registering both for one HTTP method is a conflict.
    pub fn same_shape(&self, other: &Self) -> bool {
        self.segments == other.segments && self.verb == other.verb
    }

    /// Orders templates so that the more specific one is tried first.
    ///
    /// Each template is read as the sequence of its segments followed by an end marker, and the sequences
    /// are compared element by element with this rank, lowest (most specific) first:
    ///
    /// 1. the end of a template with a verb,
    /// 2. a literal,
    /// 3. `*` (bound or not),
    /// 4. the end of a template without a verb,
    /// 5. `**`.
    ///
    /// Remaining ties (same shape) are broken by the template text, so sorting is deterministic.
    ///
    /// This gives "literal before `*` before `**`", "a verb before no verb" and "more segments before
    /// fewer" wherever they can be honoured together. Applied one after another those three rules are not
    /// transitive (`/a:v` < `/a/b` by verb, `/a/b` < `/a/*:v` by literal, `/a/*:v` < `/a:v` by length),
    /// and a sort needs a total order, hence one lexicographic rank. "More segments first" yields when the
    /// longer template continues with `**`: `**` can match nothing, so `/v1/shelves/**` tried before
    /// `/v1/shelves` would shadow it. The other departures only reorder templates that cannot match the
    /// same path, so they never change which route wins.
    pub fn cmp_specificity(&self, other: &Self) -> Ordering {
        self.specificity_ranks().cmp(other.specificity_ranks()).then_with(|| self.text.cmp(&other.text))
    }

    /// The OpenAPI path for this template.
    ///
    /// Every variable becomes `{field.path}` (its dotted field path) in place of all the segments it covers,
    /// literals stay as they are and the verb stays as `:verb`: `/v1/{name=shelves/*/books/*}:read` becomes
    /// `/v1/{name}:read`. OpenAPI cannot express an unbound `*` or `**`, so each becomes a parameter
    /// `{__wildcard_N}`, numbered from 1 in template order and skipping any name a variable already uses.
    pub fn openapi_path(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut variables = self.variables.iter().peekable();
        let mut wildcard_number = 0;
        let mut index = 0;
        while let Some(segment) = self.segments.get(index) {
            out.push('/');
            if let Some(variable) = variables.next_if(|variable| variable.segments.start == index) {
                out.push('{');
                out.push_str(&variable.openapi_name());
                out.push('}');
                index = variable.segments.end;
                continue;
            }
            match segment {
                Segment::Literal(literal) => out.push_str(literal),
                Segment::Wildcard | Segment::DoubleWildcard => {
                    out.push('{');
                    out.push_str(&self.next_wildcard_name(&mut wildcard_number));
                    out.push('}');
                }
            }
            index += 1;
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    fn next_wildcard_name(&self, number: &mut usize) -> String {
        loop {
            *number += 1;
            let name = format!("__wildcard_{number}");
            let taken =
                self.variables.iter().any(|variable| matches!(variable.field_path.as_slice(), [only] if *only == name));
            if !taken {
                return name;
            }
        }
    }

    /// Returns the path without its leading `/` and, if the template has a verb, without `:verb`.
    fn strip_verb<'p>(&self, rest: &'p str) -> Option<&'p str> {
        let Some(verb) = &self.verb else {
            return Some(rest);
        };
        let stripped = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        // `/v1/:watch` puts the verb on an empty segment, which must not slip through as "no segment".
        if stripped.is_empty() || stripped.ends_with('/') {
            return None;
        }
        Some(stripped)
    }

    fn segments_match(&self, rest: &str) -> bool {
        if rest.is_empty() {
            // The root path has no segments, so only a lone `**` can match it.
            return matches!(self.segments.as_slice(), [Segment::DoubleWildcard]);
        }
        // Split as bytes: a path's segments are short, and `str::split` sets up a searcher for each.
        let mut path_segments = rest.as_bytes().split(|byte| *byte == b'/');
        for segment in &self.segments {
            let matched = match segment {
                Segment::DoubleWildcard => return path_segments.all(|path_segment| !path_segment.is_empty()),
                Segment::Wildcard => path_segments.next().is_some_and(|path_segment| !path_segment.is_empty()),
                // Literals are never empty, so this also rejects empty path segments.
                Segment::Literal(literal) => path_segments.next() == Some(literal.as_bytes()),
            };
            if !matched {
                return false;
            }
        }
        path_segments.next().is_none()
    }

    fn ends_with_double_wildcard(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::DoubleWildcard))
    }

    fn specificity_ranks(&self) -> impl Iterator<Item = SpecificityRank> + '_ {
        let end = if self.verb.is_some() { SpecificityRank::EndWithVerb } else { SpecificityRank::EndWithoutVerb };
        self.segments
            .iter()
            .map(|segment| match segment {
                Segment::Literal(_) => SpecificityRank::Literal,
                Segment::Wildcard => SpecificityRank::Wildcard,
                Segment::DoubleWildcard => SpecificityRank::DoubleWildcard,
            })
            .chain(std::iter::once(end))
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// See [`PathTemplate::cmp_specificity`]; the derived order is the declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SpecificityRank {
    EndWithVerb,
    Literal,
    Wildcard,
    EndWithoutVerb,
    DoubleWildcard,
}

/// The text of path segments `from..to` of `rest`, with the slashes between them.
fn segment_slice(rest: &str, from: usize, to: usize) -> &str {
    if from >= to {
        return "";
    }
    let mut start = 0;
    let mut end = rest.len();
    // The slash numbered `n` (from 0) ends segment `n` and starts segment `n + 1`.
    for (n, position) in slashes(rest).enumerate() {
        if n + 1 == from {
            start = position + 1;
        }
        if n + 1 == to {
            end = position;
            break;
        }
    }
    &rest[start..end]
}

/// The byte offsets of the `/`s in `path`.
fn slashes(path: &str) -> impl Iterator<Item = usize> + '_ {
    path.bytes().enumerate().filter_map(|(at, byte)| (byte == b'/').then_some(at))
}

/// Percent-decodes `raw`; with `keep_encoded_slash`, `%2F`/`%2f` are left as they are.
fn percent_decode(raw: &str, keep_encoded_slash: bool) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte != b'%' {
            decoded.push(byte);
            index += 1;
            continue;
        }
        let high = hex_value(*bytes.get(index + 1)?)?;
        let low = hex_value(*bytes.get(index + 2)?)?;
        let value = (high << 4) | low;
        if keep_encoded_slash && value == b'/' {
            decoded.extend_from_slice(&bytes[index..index + 3]);
        } else {
            decoded.push(value);
        }
        index += 3;
    }
    String::from_utf8(decoded).ok()
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// A LITERAL byte other than `%` (checked with the two hex digits that must follow it).
fn is_literal_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@".contains(&byte)
}

/// A recursive-descent parser over the template's bytes. It only ever advances over ASCII, so `pos` is always
/// a char boundary.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    /// Where a `**` was parsed: any segment after it is an error reported at this offset.
    double_wildcard_at: Option<usize>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text, pos: 0, segments: Vec::new(), variables: Vec::new(), double_wildcard_at: None }
    }

    fn template(mut self) -> Result<PathTemplate, TemplateError> {
        if !self.text.starts_with('/') {
            return Err(self.error(TemplateErrorKind::MissingLeadingSlash, 0));
        }
        self.pos = 1;
        loop {
            self.top_level_segment()?;
            match self.peek() {
                None => return Ok(self.finish(None)),
                Some(b':') if self.at_verb() => {
                    let verb = self.verb()?;
                    return Ok(self.finish(Some(verb)));
                }
                Some(b'/') => {
                    self.pos += 1;
                    if self.peek().is_none() {
                        return Err(self.error(TemplateErrorKind::TrailingSlash, self.pos - 1));
                    }
                }
                Some(b'}') => return Err(self.error(TemplateErrorKind::UnmatchedCloseBrace, self.pos)),
                // Anything else glued to a segment: `{a}b`, `a{b}`, `{a}*`.
                Some(_) => return Err(self.error(TemplateErrorKind::VariableNotWholeSegment, self.pos)),
            }
        }
    }

    fn finish(self, verb: Option<String>) -> PathTemplate {
        PathTemplate { text: Arc::from(self.text), segments: self.segments, variables: self.variables, verb }
    }

    fn top_level_segment(&mut self) -> Result<(), TemplateError> {
        let start = self.pos;
        match self.peek() {
            Some(b'{') => self.variable(),
            Some(b'}') => Err(self.error(TemplateErrorKind::UnmatchedCloseBrace, start)),
            Some(b'*') => {
                let segment = self.wildcard(Self::at_top_level_end)?;
                self.push_segment(segment, start)
            }
            // End of text, `/`, or the verb's colon where a segment should start.
            _ if self.at_top_level_end() => Err(self.error(TemplateErrorKind::EmptySegment, start)),
            _ => {
                let literal = self.literal(Self::at_top_level_end)?;
                self.push_segment(Segment::Literal(literal), start)
            }
        }
    }

    fn variable(&mut self) -> Result<(), TemplateError> {
        let open = self.pos;
        // Without any `}` ahead, whatever else is wrong inside, the real mistake is the missing brace.
        if !self.text.as_bytes()[open..].contains(&b'}') {
            return Err(self.error(TemplateErrorKind::UnclosedVariable, open));
        }
        self.pos += 1;
        let field_path = self.field_path(open)?;
        let first_segment = self.segments.len();
        if self.peek() == Some(b'=') {
            self.pos += 1;
            loop {
                self.variable_segment(open)?;
                match self.peek() {
                    Some(b'/') => self.pos += 1,
                    Some(b'}') => break,
                    Some(b'{') => return Err(self.error(TemplateErrorKind::NestedVariable, self.pos)),
                    _ => return Err(self.error(TemplateErrorKind::UnclosedVariable, open)),
                }
            }
        } else {
            // `{var}` is shorthand for `{var=*}`.
            self.push_segment(Segment::Wildcard, open)?;
        }
        self.pos += 1; // the closing `}`

        if self.variables.iter().any(|variable| variable.field_path == field_path) {
            return Err(self.error(TemplateErrorKind::DuplicateFieldPath(field_path.join(".")), open));
        }
        let segments = first_segment..self.segments.len();
        let multi_segment = segments.len() > 1 || self.ends_with_double_wildcard();
        self.variables.push(Variable { field_path, segments, multi_segment });
        Ok(())
    }

    fn ends_with_double_wildcard(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::DoubleWildcard))
    }

    /// Parses `IDENT { "." IDENT }`, stopping at the `=` or `}` that follows it.
    fn field_path(&mut self, open: usize) -> Result<Vec<String>, TemplateError> {
        let mut field_path = Vec::new();
        loop {
            let start = self.pos;
            match self.peek() {
                Some(byte) if byte.is_ascii_alphabetic() || byte == b'_' => {}
                Some(b'{') => return Err(self.error(TemplateErrorKind::NestedVariable, start)),
                None => return Err(self.error(TemplateErrorKind::UnclosedVariable, open)),
                Some(_) => return Err(self.error(TemplateErrorKind::InvalidIdentifier, start)),
            }
            while self.peek().is_some_and(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                self.pos += 1;
            }
            field_path.push(self.text[start..self.pos].to_owned());
            match self.peek() {
                Some(b'.') => self.pos += 1,
                Some(b'=' | b'}') => return Ok(field_path),
                Some(b'{') => return Err(self.error(TemplateErrorKind::NestedVariable, self.pos)),
                None => return Err(self.error(TemplateErrorKind::UnclosedVariable, open)),
                Some(_) => return Err(self.error(TemplateErrorKind::InvalidIdentifier, self.pos)),
            }
        }
    }

    fn variable_segment(&mut self, open: usize) -> Result<(), TemplateError> {
        let start = self.pos;
        match self.peek() {
            None => Err(self.error(TemplateErrorKind::UnclosedVariable, open)),
            Some(b'/' | b'}') => Err(self.error(TemplateErrorKind::EmptySegment, start)),
            Some(b'{') => Err(self.error(TemplateErrorKind::NestedVariable, start)),
            Some(b'*') => {
                let segment = self.wildcard(Self::at_variable_end)?;
                self.push_segment(segment, start)
            }
            Some(_) => {
                let literal = self.literal(Self::at_variable_end)?;
                self.push_segment(Segment::Literal(literal), start)
            }
        }
    }

    /// Parses `*` or `**`, which must fill the whole segment.
    fn wildcard(&mut self, at_end: fn(&Self) -> bool) -> Result<Segment, TemplateError> {
        let start = self.pos;
        while self.peek() == Some(b'*') {
            self.pos += 1;
        }
        let segment = match self.pos - start {
            1 => Segment::Wildcard,
            2 => Segment::DoubleWildcard,
            _ => return Err(self.error(TemplateErrorKind::PartialWildcard, start)),
        };
        if !at_end(self) {
            return Err(self.error(TemplateErrorKind::PartialWildcard, start));
        }
        Ok(segment)
    }

    /// Consumes LITERAL characters up to where `at_end` says the literal stops; the caller ensures there is at
    /// least one.
    fn literal(&mut self, at_end: fn(&Self) -> bool) -> Result<String, TemplateError> {
        let start = self.pos;
        while let Some(byte) = self.peek() {
            if at_end(self) {
                break;
            }
            match byte {
                b'%' => {
                    let bytes = self.text.as_bytes();
                    let is_hex = |index: usize| bytes.get(index).is_some_and(u8::is_ascii_hexdigit);
                    if !(is_hex(self.pos + 1) && is_hex(self.pos + 2)) {
                        return Err(self.error(TemplateErrorKind::InvalidPercentEncoding, self.pos));
                    }
                    self.pos += 3;
                }
                b'*' => return Err(self.error(TemplateErrorKind::PartialWildcard, self.pos)),
                _ if is_literal_byte(byte) => self.pos += 1,
                _ => {
                    let found = self.text[self.pos..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
                    return Err(self.error(TemplateErrorKind::InvalidCharacter(found), self.pos));
                }
            }
        }
        Ok(self.text[start..self.pos].to_owned())
    }

    /// Parses `":" LITERAL` to the end of the template; `pos` is at the colon.
    fn verb(&mut self) -> Result<String, TemplateError> {
        let colon = self.pos;
        self.pos += 1;
        if self.peek().is_none() {
            return Err(self.error(TemplateErrorKind::EmptyVerb, colon));
        }
        let verb = self.literal(|parser| matches!(parser.peek(), None | Some(b':')))?;
        if self.peek() == Some(b':') {
            return Err(self.error(TemplateErrorKind::InvalidCharacter(':'), self.pos));
        }
        Ok(verb)
    }

    fn push_segment(&mut self, segment: Segment, offset: usize) -> Result<(), TemplateError> {
        if let Some(double_wildcard) = self.double_wildcard_at {
            return Err(self.error(TemplateErrorKind::DoubleWildcardNotLast, double_wildcard));
        }
        if segment == Segment::DoubleWildcard {
            self.double_wildcard_at = Some(offset);
        }
        self.segments.push(segment);
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// At a `:` that starts the verb: one after which no `/` follows.
    fn at_verb(&self) -> bool {
        self.peek() == Some(b':') && !self.text.as_bytes()[self.pos..].contains(&b'/')
    }

    fn at_top_level_end(&self) -> bool {
        matches!(self.peek(), None | Some(b'/' | b'{' | b'}')) || self.at_verb()
    }

    fn at_variable_end(&self) -> bool {
        matches!(self.peek(), None | Some(b'/' | b'{' | b'}'))
    }

    fn error(&self, kind: TemplateErrorKind, offset: usize) -> TemplateError {
        TemplateError { template: self.text.to_owned(), kind, offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(template: &str) -> PathTemplate {
        match PathTemplate::parse(template) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{error}"),
        }
    }

    /// Variables as (dotted field path, is_multi_segment), for compact tables.
    fn variable_summary(template: &PathTemplate) -> Vec<(String, bool)> {
        template.variables().iter().map(|v| (v.field_path.join("."), v.is_multi_segment())).collect()
    }

    #[test]
    fn valid_templates() {
        // (template, variables as (field path, multi-segment), verb, OpenAPI path)
        type Case = (&'static str, &'static [(&'static str, bool)], Option<&'static str>, &'static str);
        let cases: &[Case] = &[
            ("/v1/users", &[], None, "/v1/users"),
            ("/v1/users/{id}", &[("id", false)], None, "/v1/users/{id}"),
            ("/v1/users/{id=*}", &[("id", false)], None, "/v1/users/{id}"),
            ("/v1/{name=shelves/*/books/*}", &[("name", true)], None, "/v1/{name}"),
            ("/v1/{name=shelves/*/books/*}:read", &[("name", true)], Some("read"), "/v1/{name}:read"),
            ("/v1/{name=**}", &[("name", true)], None, "/v1/{name}"),
            ("/v1/{name=shelves/**}", &[("name", true)], None, "/v1/{name}"),
            ("/v1/{name=shelves}", &[("name", false)], None, "/v1/{name}"),
            ("/v1/users/{user.id}", &[("user.id", false)], None, "/v1/users/{user_id}"),
            ("/v1/{a.b.c}", &[("a.b.c", false)], None, "/v1/{a_b_c}"),
            ("/_x9/{_a.b_1.C2}", &[("_a.b_1.C2", false)], None, "/_x9/{_a_b_1_C2}"),
            ("/v1/users:watch", &[], Some("watch"), "/v1/users:watch"),
            ("/v1/users:batchCreate", &[], Some("batchCreate"), "/v1/users:batchCreate"),
            ("/v1/{name=projects/*}:cancel", &[("name", true)], Some("cancel"), "/v1/{name}:cancel"),
            ("/v1/{id}:cancel", &[("id", false)], Some("cancel"), "/v1/{id}:cancel"),
            ("/v1/*:watch", &[], Some("watch"), "/v1/{__wildcard_1}:watch"),
            ("/v1/**:watch", &[], Some("watch"), "/v1/{__wildcard_1}:watch"),
            (
                "/v1/projects/{project}/topics/{topic}",
                &[("project", false), ("topic", false)],
                None,
                "/v1/projects/{project}/topics/{topic}",
            ),
            (
                "/v1/{parent=projects/*}/topics/{topic.name=*/**}",
                &[("parent", true), ("topic.name", true)],
                None,
                "/v1/{parent}/topics/{topic_name}",
            ),
            ("/v1/*/x", &[], None, "/v1/{__wildcard_1}/x"),
            ("/v1/*/x/**", &[], None, "/v1/{__wildcard_1}/x/{__wildcard_2}"),
            ("/v1/{__wildcard_1}/*", &[("__wildcard_1", false)], None, "/v1/{__wildcard_1}/{__wildcard_2}"),
            ("/**", &[], None, "/{__wildcard_1}"),
            ("/{path=**}", &[("path", true)], None, "/{path}"),
            // `:` is part of a literal when a `/` follows it, and anywhere inside a variable.
            ("/v1/a:b/c", &[], None, "/v1/a:b/c"),
            ("/v1/{name=a:b/*}", &[("name", true)], None, "/v1/{name}"),
            ("/v1/{name=x/a:b}:do", &[("name", true)], Some("do"), "/v1/{name}:do"),
            ("/v1/user@example/-._~!$&'()+,;=", &[], None, "/v1/user@example/-._~!$&'()+,;="),
            ("/v1/caf%C3%A9:g%2Fo", &[], Some("g%2Fo"), "/v1/caf%C3%A9:g%2Fo"),
        ];
        for &(text, variables, verb, openapi) in cases {
            let template = parse(text);
            assert_eq!(template.as_str(), text);
            assert_eq!(template.to_string(), text);
            let expected: Vec<(String, bool)> =
                variables.iter().map(|&(path, multi)| (path.to_owned(), multi)).collect();
            assert_eq!(variable_summary(&template), expected, "variables of {text}");
            assert_eq!(template.verb(), verb, "verb of {text}");
            assert_eq!(template.openapi_path(), openapi, "OpenAPI path of {text}");
        }
    }

    #[test]
    fn field_path_is_split_on_dots() {
        let template = parse("/v1/{user.profile.id}");
        assert_eq!(template.variables()[0].field_path, ["user", "profile", "id"]);
    }

    #[test]
    fn invalid_templates() {
        // (template, expected kind, expected byte offset)
        use TemplateErrorKind as K;
        let cases: &[(&str, TemplateErrorKind, usize)] = &[
            ("", K::MissingLeadingSlash, 0),
            ("v1/users", K::MissingLeadingSlash, 0),
            ("/", K::EmptySegment, 1),
            ("/v1//users", K::EmptySegment, 4),
            ("//v1", K::EmptySegment, 1),
            ("/v1/:watch", K::EmptySegment, 4),
            ("/v1/{a=}", K::EmptySegment, 7),
            ("/v1/{a=b//c}", K::EmptySegment, 9),
            ("/v1/{a=b/}", K::EmptySegment, 9),
            ("/v1/users/", K::TrailingSlash, 9),
            ("/v1/{id}/", K::TrailingSlash, 8),
            ("/v1/**/x", K::DoubleWildcardNotLast, 4),
            ("/v1/**/{id}", K::DoubleWildcardNotLast, 4),
            ("/v1/{name=**}/x", K::DoubleWildcardNotLast, 10),
            ("/v1/{name=**/x}", K::DoubleWildcardNotLast, 10),
            ("/v1/a*", K::PartialWildcard, 5),
            ("/v1/*a", K::PartialWildcard, 4),
            ("/v1/***", K::PartialWildcard, 4),
            ("/v1/{a=x*}", K::PartialWildcard, 8),
            ("/v1/x:a*", K::PartialWildcard, 7),
            ("/v1/{a={b}}", K::NestedVariable, 7),
            ("/v1/{a=x/{b}}", K::NestedVariable, 9),
            ("/v1/{a{b}}", K::NestedVariable, 6),
            ("/v1/{id", K::UnclosedVariable, 4),
            ("/v1/{id=x/*", K::UnclosedVariable, 4),
            ("/v1/{a}/{b.c", K::UnclosedVariable, 8),
            ("/v1/}", K::UnmatchedCloseBrace, 4),
            ("/v1/x}", K::UnmatchedCloseBrace, 5),
            ("/v1/{a}}", K::UnmatchedCloseBrace, 7),
            ("/v1/a{b}", K::VariableNotWholeSegment, 5),
            ("/v1/{a}b", K::VariableNotWholeSegment, 7),
            ("/v1/{a}{b}", K::VariableNotWholeSegment, 7),
            ("/v1/{a}:x/y", K::VariableNotWholeSegment, 7),
            ("/v1/{}", K::InvalidIdentifier, 5),
            ("/v1/{1id}", K::InvalidIdentifier, 5),
            ("/v1/{a..b}", K::InvalidIdentifier, 7),
            ("/v1/{a.}", K::InvalidIdentifier, 7),
            ("/v1/{.a}", K::InvalidIdentifier, 5),
            ("/v1/{a-b}", K::InvalidIdentifier, 6),
            ("/v1/{=x}", K::InvalidIdentifier, 5),
            ("/v1/{id}/{id}", K::DuplicateFieldPath("id".to_owned()), 9),
            ("/v1/{a.b}/x/{a.b=*}", K::DuplicateFieldPath("a.b".to_owned()), 12),
            ("/v1/users:", K::EmptyVerb, 9),
            ("/v1/{id}:", K::EmptyVerb, 8),
            ("/v1/users:wat:ch", K::InvalidCharacter(':'), 13),
            ("/v1/users::watch", K::InvalidCharacter(':'), 10),
            ("/v1/a b", K::InvalidCharacter(' '), 5),
            ("/v1/users?x=1", K::InvalidCharacter('?'), 9),
            ("/v1/users#top", K::InvalidCharacter('#'), 9),
            ("/v1/café", K::InvalidCharacter('é'), 7),
            ("/v1/x:wa tch", K::InvalidCharacter(' '), 8),
            ("/v1/a%2", K::InvalidPercentEncoding, 5),
            ("/v1/a%zz", K::InvalidPercentEncoding, 5),
            ("/v1/{a=%}", K::InvalidPercentEncoding, 7),
        ];
        for (text, kind, offset) in cases {
            let error = match PathTemplate::parse(text) {
                Ok(template) => panic!("{text:?} parsed as {template:?}"),
                Err(error) => error,
            };
            assert_eq!((error.kind(), error.offset()), (kind, *offset), "{text:?}: {error}");
            assert_eq!(error.template(), *text);
            let message = error.to_string();
            assert!(message.starts_with(&format!("template {text:?}: ")), "{message}");
            assert!(message.ends_with(&format!(" at byte {offset}")), "{message}");
        }
    }

    #[test]
    fn error_messages_name_the_template_and_the_problem() {
        let cases = [
            ("/v1/{id", r#"template "/v1/{id": unclosed variable at byte 4"#),
            ("v1", r#"template "v1": must start with '/' at byte 0"#),
            ("/v1/**/x", r#"template "/v1/**/x": '**' must be the last segment at byte 4"#),
            ("/v1/{id}/{id}", r#"template "/v1/{id}/{id}": field path "id" is bound more than once at byte 9"#),
            ("/v1/}", r#"template "/v1/}": '}' without a matching '{' at byte 4"#),
            ("/v1/x:", r#"template "/v1/x:": empty verb at byte 5"#),
            ("/v1/x/", r#"template "/v1/x/": trailing slash at byte 5"#),
        ];
        for (text, expected) in cases {
            match PathTemplate::parse(text) {
                Ok(template) => panic!("{text:?} parsed as {template:?}"),
                Err(error) => assert_eq!(error.to_string(), expected),
            }
        }
    }

    #[test]
    fn matching() {
        // (template, path, expected bindings as (dotted field path, value), or None for no match)
        type Case = (&'static str, &'static str, Option<&'static [(&'static str, &'static str)]>);
        let cases: &[Case] = &[
            // Literals: exact, case-sensitive, raw.
            ("/v1/users", "/v1/users", Some(&[])),
            ("/v1/users", "/v1/user", None),
            ("/v1/users", "/v1/users/x", None),
            ("/v1/users", "/v1", None),
            ("/v1/users", "/V1/users", None),
            ("/v1/users", "/v1/Users", None),
            ("/v1/users", "v1/users", None),
            ("/v1/users", "", None),
            ("/v1/caf%C3%A9", "/v1/caf%C3%A9", Some(&[])),
            ("/v1/caf%C3%A9", "/v1/caf%c3%a9", None),
            ("/v1/caf%C3%A9", "/v1/café", None),
            // `*`: exactly one non-empty segment, never decoded or checked.
            ("/v1/*", "/v1/abc", Some(&[])),
            ("/v1/*", "/v1", None),
            ("/v1/*", "/v1/a/b", None),
            ("/v1/*", "/v1/", None),
            ("/v1/*/{id}", "/v1/%G1/x", Some(&[("id", "x")])),
            // `**` at the end: zero or more non-empty segments.
            ("/v1/**", "/v1", Some(&[])),
            ("/v1/**", "/v1/a", Some(&[])),
            ("/v1/**", "/v1/a/b/c", Some(&[])),
            ("/v1/**", "/v1/a//b", None),
            ("/v1/**", "/v1/a/", None),
            ("/v1/**", "/v1/", None),
            ("/v1/**", "/v2/a", None),
            ("/**", "/", Some(&[])),
            ("/**", "/a/b", Some(&[])),
            ("/{path=**}", "/", Some(&[("path", "")])),
            ("/{path=**}", "/a/b", Some(&[("path", "a/b")])),
            ("/v1/*", "/", None),
            ("/v1/**", "/", None),
            // `{var}` and `{var=*}`.
            ("/v1/users/{id}", "/v1/users/42", Some(&[("id", "42")])),
            ("/v1/users/{id=*}", "/v1/users/42", Some(&[("id", "42")])),
            ("/v1/users/{id}", "/v1/users", None),
            ("/v1/users/{id}", "/v1/users/42/x", None),
            ("/v1/users/{id}", "/v1/users/", None),
            ("/v1/users/{id}", "/v1/users//", None),
            ("/v1/users/{id}", "/v1//users/42", None),
            ("/v1/users/{id}", "/v1/users/a@b.com", Some(&[("id", "a@b.com")])),
            // Multi-segment patterns.
            ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b2", Some(&[("name", "shelves/s1/books/b2")])),
            ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books", None),
            ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b2/x", None),
            ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/notes/b2", None),
            ("/v1/{name=shelves/*/books/*}", "/v1/shelves//books/b2", None),
            ("/v1/{name=shelves/*/books/*}", "/v1/Shelves/s1/books/b2", None),
            ("/v1/{name=**}", "/v1/a/b/c", Some(&[("name", "a/b/c")])),
            ("/v1/{name=**}", "/v1/a", Some(&[("name", "a")])),
            ("/v1/{name=**}", "/v1", Some(&[("name", "")])),
            ("/v1/{name=**}", "/v1/a//c", None),
            ("/v1/{name=shelves/**}", "/v1/shelves", Some(&[("name", "shelves")])),
            ("/v1/{name=shelves/**}", "/v1/shelves/a/b", Some(&[("name", "shelves/a/b")])),
            ("/v1/{name=shelves/**}", "/v1/shelvesx", None),
            ("/v1/{name=shelves/**}", "/v1/shelves/", None),
            ("/v1/{name=shelves}", "/v1/shelves", Some(&[("name", "shelves")])),
            ("/v1/{name=shelves}", "/v1/other", None),
            // Nested field paths and several variables.
            ("/v1/{user.profile.id}", "/v1/7", Some(&[("user.profile.id", "7")])),
            (
                "/v1/projects/{project}/topics/{topic}",
                "/v1/projects/p1/topics/t2",
                Some(&[("project", "p1"), ("topic", "t2")]),
            ),
            ("/v1/projects/{project}/topics/{topic}", "/v1/projects/p1/subscriptions/t2", None),
            (
                "/v1/{parent=projects/*}/topics/{topic.name=*/**}",
                "/v1/projects/p/topics/a/b/c",
                Some(&[("parent", "projects/p"), ("topic.name", "a/b/c")]),
            ),
            (
                "/v1/{parent=projects/*}/topics/{topic.name=*/**}",
                "/v1/projects/p/topics/a",
                Some(&[("parent", "projects/p"), ("topic.name", "a")]),
            ),
            ("/v1/{parent=projects/*}/topics/{topic.name=*/**}", "/v1/projects/p/topics", None),
            ("/{a}/{b}/{c}", "/x/y/z", Some(&[("a", "x"), ("b", "y"), ("c", "z")])),
            // Verbs.
            ("/v1/users:watch", "/v1/users:watch", Some(&[])),
            ("/v1/users:watch", "/v1/users", None),
            ("/v1/users:watch", "/v1/users:watc", None),
            ("/v1/users:watch", "/v1/users:watchx", None),
            ("/v1/users:watch", "/v1/users:Watch", None),
            ("/v1/users:watch", "/v1/userswatch", None),
            ("/v1/users:watch", "/v1/users/:watch", None),
            ("/v1/users:watch", "/v1/users/x:watch", None),
            ("/v1/users:watch", "/v1/users%3Awatch", None),
            ("/v1/users:batchCreate", "/v1/users:batchCreate", Some(&[])),
            ("/v1/users:batchCreate", "/v1/users:batchcreate", None),
            ("/v1/{name=operations/*}:cancel", "/v1/operations/op1:cancel", Some(&[("name", "operations/op1")])),
            ("/v1/{name=operations/*}:cancel", "/v1/operations/op1", None),
            ("/v1/{name=operations/*}:cancel", "/v1/operations/:cancel", None),
            ("/v1/{id}:cancel", "/v1/42:cancel", Some(&[("id", "42")])),
            ("/v1/{id}:cancel", "/v1/a:b:cancel", Some(&[("id", "a:b")])),
            ("/v1/{id}:cancel", "/v1/:cancel", None),
            ("/v1/*:watch", "/v1/:watch", None),
            ("/**:watch", "/:watch", None),
            ("/v1/{name=**}:cancel", "/v1/a/b:cancel", Some(&[("name", "a/b")])),
            ("/v1/{name=**}:cancel", "/v1:cancel", Some(&[("name", "")])),
            (
                "/v1/{parent=projects/*}/topics/{topic_id}:publish",
                "/v1/projects/p/topics/t:publish",
                Some(&[("parent", "projects/p"), ("topic_id", "t")]),
            ),
            // No verb in the template: a colon is just part of the last segment.
            ("/v1/users/{id}", "/v1/users/abc:def", Some(&[("id", "abc:def")])),
            ("/v1/users/{id}", "/v1/users/me:watch", Some(&[("id", "me:watch")])),
            ("/v1/{name=projects/*}", "/v1/projects/a:b", Some(&[("name", "projects/a:b")])),
            ("/v1/users", "/v1/users:watch", None),
            ("/v1/a:b/c", "/v1/a:b/c", Some(&[])),
            // Percent-decoding: single-segment values fully, multi-segment values all but `%2F`.
            ("/v1/users/{id}", "/v1/users/a%2Fb", Some(&[("id", "a/b")])),
            ("/v1/users/{id}", "/v1/users/a%2fb", Some(&[("id", "a/b")])),
            ("/v1/users/{id}", "/v1/users/caf%C3%A9", Some(&[("id", "café")])),
            ("/v1/users/{id}", "/v1/users/a%20b%3Ac", Some(&[("id", "a b:c")])),
            ("/v1/users/{id}", "/v1/users/a%40b.com", Some(&[("id", "a@b.com")])),
            ("/v1/users/{id}", "/v1/users/a+b", Some(&[("id", "a+b")])),
            ("/v1/{name=**}", "/v1/a%2Fb/c", Some(&[("name", "a%2Fb/c")])),
            ("/v1/{name=**}", "/v1/a%2fb", Some(&[("name", "a%2fb")])),
            ("/v1/{name=shelves/*}", "/v1/shelves/a%2Fb%20c", Some(&[("name", "shelves/a%2Fb c")])),
            ("/v1/{name=shelves/*}", "/v1/shelves/caf%C3%A9", Some(&[("name", "shelves/café")])),
            ("/v1/{id}:cancel", "/v1/a%2Fb:cancel", Some(&[("id", "a/b")])),
            // Bad percent-encoding or invalid UTF-8 in a bound value: no match.
            ("/v1/users/{id}", "/v1/users/%G1", None),
            ("/v1/users/{id}", "/v1/users/abc%4", None),
            ("/v1/users/{id}", "/v1/users/abc%", None),
            ("/v1/users/{id}", "/v1/users/%FF", None),
            ("/v1/users/{id}", "/v1/users/%C3", None),
            ("/v1/{name=**}", "/v1/a/%zz", None),
            ("/v1/{name=**}", "/v1/a/%2", None),
        ];
        for &(text, path, expected) in cases {
            let template = parse(text);
            let actual = template.matches(path).map(|found| {
                found
                    .bindings(&template)
                    .map(|(field_path, value)| (field_path.join("."), value.to_owned()))
                    .collect::<Vec<_>>()
            });
            let expected = expected.map(|bindings| {
                bindings.iter().map(|&(field, value)| (field.to_owned(), value.to_owned())).collect::<Vec<_>>()
            });
            assert_eq!(actual, expected, "template {text:?}, path {path:?}");
        }
    }

    #[test]
    fn bindings_carry_the_field_path_elements() {
        let template = parse("/v1/{user.id}/{name=x/**}");
        let found = template.matches("/v1/7/x/y");
        let bindings = found.as_ref().map(|found| {
            found.bindings(&template).map(|(path, value)| (path.to_vec(), value.to_owned())).collect::<Vec<_>>()
        });
        let expected = vec![
            (vec!["user".to_owned(), "id".to_owned()], "7".to_owned()),
            (vec!["name".to_owned()], "x/y".to_owned()),
        ];
        assert_eq!(bindings, Some(expected));
    }

    #[test]
    fn same_shape() {
        let cases = [
            ("/v1/users/{id}", "/v1/users/{name}", true),
            ("/v1/users/{id}", "/v1/users/*", true),
            ("/v1/{name=shelves/*}", "/v1/shelves/{id}", true),
            ("/v1/{a}/{b}", "/v1/{x=*/*}", true),
            ("/v1/{a.b=**}", "/v1/**", true),
            ("/v1/users:watch", "/v1/users:watch", true),
            ("/v1/users/{id}", "/v1/users/{id}:watch", false),
            ("/v1/users:watch", "/v1/users:list", false),
            ("/v1/users/{id}", "/v1/users/me", false),
            ("/v1/{name=**}", "/v1/{name=*}", false),
            ("/v1/users", "/v1/Users", false),
            ("/v1/users", "/v1/users/{id}", false),
            ("/v1/{id}", "/v2/{id}", false),
        ];
        for (a, b, expected) in cases {
            assert_eq!(parse(a).same_shape(&parse(b)), expected, "{a} vs {b}");
            assert_eq!(parse(b).same_shape(&parse(a)), expected, "{b} vs {a}");
        }
    }

    #[test]
    fn cmp_specificity() {
        use Ordering::{Equal, Greater, Less};
        let cases = [
            ("/v1/users/me", "/v1/users/{id}", Less),
            ("/v1/users/{id}", "/v1/users/{name=**}", Less),
            ("/v1/users/*", "/v1/**", Less),
            ("/v1/users/*:watch", "/v1/users/*", Less),
            ("/v1/users:watch", "/v1/users/me", Less),
            ("/v1/a/b", "/v1/a", Less),
            ("/v1/a/*", "/v1/a", Less),
            // `**` can match nothing, so the shorter template must come first or be shadowed.
            ("/v1/shelves", "/v1/{name=shelves/**}", Less),
            ("/v1/a:x", "/v1/a/**", Less),
            // Same shape: decided by the text alone.
            ("/v1/users/{id}", "/v1/users/{name}", Less),
            ("/v1/users:list", "/v1/users:watch", Less),
            ("/v1/a", "/v1/a", Equal),
        ];
        for (a, b, expected) in cases {
            assert_eq!(parse(a).cmp_specificity(&parse(b)), expected, "{a} vs {b}");
            assert_eq!(parse(b).cmp_specificity(&parse(a)), expected.reverse(), "{b} vs {a}");
        }
        assert_eq!(parse("/v1/a").cmp_specificity(&parse("/v1/a/**")), Less);
        assert_eq!(parse("/v1/{x}").cmp_specificity(&parse("/v1/a")), Greater);
    }

    #[test]
    fn sorting_tries_literal_routes_first() {
        let mut routes: Vec<PathTemplate> =
            ["/v1/{name=**}", "/v1/users/{id}", "/v1/users/me", "/v1/users:watch"].into_iter().map(parse).collect();
        routes.sort_by(PathTemplate::cmp_specificity);
        let order: Vec<&str> = routes.iter().map(PathTemplate::as_str).collect();
        assert_eq!(order, ["/v1/users:watch", "/v1/users/me", "/v1/users/{id}", "/v1/{name=**}"]);

        // The first match in that order is the route a request should reach.
        let dispatch = [
            ("/v1/users/me", "/v1/users/me"),
            ("/v1/users:watch", "/v1/users:watch"),
            ("/v1/users/42", "/v1/users/{id}"),
            ("/v1/users/me:watch", "/v1/users/{id}"),
            ("/v1/users", "/v1/{name=**}"),
            ("/v1/users/me/x", "/v1/{name=**}"),
        ];
        for (path, route) in dispatch {
            let first = routes.iter().find(|template| template.matches(path).is_some()).map(PathTemplate::as_str);
            assert_eq!(first, Some(route), "{path}");
        }
    }

    /// Sorting needs a total order, so check one over every small template shape: after sorting, each
    /// template must compare strictly below every later one (a cycle anywhere would break this).
    #[test]
    fn cmp_specificity_is_a_total_order() {
        let pieces = ["a", "b", "*", "{x}", "**"];
        let mut shapes: Vec<Vec<&str>> = vec![vec![]];
        let mut texts = Vec::new();
        for _ in 0..3 {
            shapes = shapes
                .iter()
                .filter(|shape| shape.last() != Some(&"**"))
                .flat_map(|shape| {
                    pieces.iter().map(move |piece| {
                        let mut longer = shape.clone();
                        longer.push(piece);
                        longer
                    })
                })
                .collect();
            for shape in &shapes {
                // Variables are numbered by position because a field path may be bound only once.
                let segments: Vec<String> = shape
                    .iter()
                    .enumerate()
                    .map(|(i, piece)| if *piece == "{x}" { format!("{{x{i}}}") } else { (*piece).to_owned() })
                    .collect();
                let path = format!("/{}", segments.join("/"));
                texts.push(format!("{path}:v"));
                texts.push(path);
            }
        }
        let mut templates: Vec<PathTemplate> = texts.iter().map(|text| parse(text)).collect();
        assert_eq!(templates.len(), 2 * (5 + 4 * 5 + 4 * 4 * 5));
        templates.sort_by(PathTemplate::cmp_specificity);
        for (i, earlier) in templates.iter().enumerate() {
            for later in &templates[i + 1..] {
                assert_eq!(earlier.cmp_specificity(later), Ordering::Less, "{earlier} vs {later}");
                assert_eq!(later.cmp_specificity(earlier), Ordering::Greater, "{later} vs {earlier}");
            }
        }
    }
}

/// Property tests: arbitrary input never panics the parser or the matcher, and a path built from a generated
/// template matches it with exactly the values it was built from.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::PathTemplate;

    #[derive(Debug, Clone)]
    enum Part {
        Literal(String),
        Variable(String),
    }

    fn template() -> impl Strategy<Value = (Vec<Part>, Option<String>, bool)> {
        let part = prop_oneof!["[a-z0-9]{1,5}".prop_map(Part::Literal), "[a-z]{1,4}".prop_map(Part::Variable)];
        (prop::collection::vec(part, 1..5), prop::option::of("[a-z]{1,5}"), any::<bool>())
    }

    proptest! {
        #[test]
        fn arbitrary_templates_and_paths_never_panic(template in "\\PC{0,24}", path in "\\PC{0,24}") {
            if let Ok(parsed) = PathTemplate::parse(&template) {
                // Whatever matches has the template's shape.
                if parsed.matches(&path).is_some() {
                    prop_assert!(parsed.fits(&path), "{} against {}", path, template);
                }
                let _ = parsed.openapi_path();
            }
        }

        #[test]
        fn a_path_built_from_a_template_matches_it_with_its_values(
            (parts, verb, rest) in template(),
            values in prop::collection::vec("[A-Za-z0-9._~-]{1,6}", 5),
            tail in prop::collection::vec("[a-z0-9]{1,4}", 1..3),
        ) {
            // Variable names must be distinct: number them.
            let mut text = String::new();
            let mut path = String::new();
            let mut expected = Vec::new();
            for (index, part) in parts.iter().enumerate() {
                match part {
                    Part::Literal(literal) => {
                        text.push_str(&format!("/{literal}"));
                        path.push_str(&format!("/{literal}"));
                    }
                    Part::Variable(name) => {
                        text.push_str(&format!("/{{{name}{index}}}"));
                        path.push_str(&format!("/{}", values[index]));
                        expected.push(values[index].clone());
                    }
                }
            }
            if rest {
                text.push_str("/{rest=**}");
                path.push_str(&format!("/{}", tail.join("/")));
                expected.push(tail.join("/"));
            }
            if let Some(verb) = &verb {
                text.push_str(&format!(":{verb}"));
                path.push_str(&format!(":{verb}"));
            }
            let parsed = PathTemplate::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let found = parsed.matches(&path).map(|m| m.values);
            prop_assert_eq!(found, Some(expected), "{} against {}", path, text);
            prop_assert!(parsed.fits(&path), "{} against {}", path, text);
            prop_assert!(!parsed.fits(&format!("{path}/extra")) || rest, "{} has a segment too many for {}", path, text);
        }
    }
}
