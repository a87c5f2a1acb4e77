//! Canonical proto3 JSON straight from a message's wire bytes, for unary answers.
//!
//! Decoding an answer into a `DynamicMessage` only to print it builds a tree of maps, strings and nested
//! messages that is dropped at once: for a user, more instructions than printing it. This writer reads the
//! fields where they lie in the bytes and prints each with `json_out`'s rules (the same value printers), so
//! the output is byte for byte what decoding and printing gives; a differential property test holds it to
//! that, on random messages, on concatenations of them (which protobuf reads as one merged message) and on
//! damaged bytes. What it needs from the descriptors is read once per route into a [`MessagePlan`]:
//! prost-reflect's accessors look a field up again, and clone the pool's handle, on every call.
//!
//! It prints the common shapes and declines the rest with [`Unsupported`], and the caller then decodes and
//! prints the general way. Declined: bytes that are malformed in any way (so that prost reports the error as
//! it always has), groups, extensions, non-empty maps (prost-reflect prints a map in its hash order), a
//! message field that occurs more than once (protobuf merges the occurrences), well-known types other than
//! Timestamp and Duration, and nesting beyond prost's recursion limit.
//!
//! Protobuf's reading rules that shape the output: the last occurrence of a singular scalar wins; repeated
//! fields append every occurrence, packed or not; a oneof holds only the member that occurred last; a field
//! with presence is printed only when it occurs, one without is printed at its default when absent. Every
//! occurrence is read, printed or not, so that bytes prost would refuse are declined here too.

use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, Value};

use super::json_out;

/// This message, or something in it, is one the wire writer does not print: decode it and print it with
/// `json_out` instead (which also reports what is wrong with bytes that do not decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

/// How deep messages may nest: prost's decoder refuses deeper ones.
const RECURSION_LIMIT: u32 = 100;

/// What printing one message type needs from its descriptor, read once.
#[derive(Debug)]
pub struct MessagePlan {
    shape: Shape,
}

#[derive(Debug)]
enum Shape {
    Timestamp,
    Duration,
    /// Well-known types other than Timestamp and Duration, and messages with extensions.
    Declined,
    /// An object of these fields, in the order the descriptor declares them.
    Fields(Vec<FieldPlan>),
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    /// `"jsonName":`, escaped.
    key: Box<[u8]>,
    kind: Kind,
    cardinality: Cardinality,
    /// The numbers of the other members of its oneof: the one that occurs last is the one set.
    rivals: Box<[u32]>,
    /// The JSON of its value when it is absent and has no presence: its default, `[]` or `{}` (empty for a field
    /// with presence, which is then not printed at all).
    absent: Box<[u8]>,
    /// Its message type's plan, made on first use (a recursive type's plan would otherwise never end).
    message: OnceLock<Box<MessagePlan>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cardinality {
    /// Printed only when it occurs (messages, oneof members, `optional`, proto2).
    Present,
    /// Printed always, at its default when absent.
    Implicit,
    List,
    Map,
    /// A group: declined.
    Group,
}

impl MessagePlan {
    /// The plan for `descriptor`'s messages. Its message fields' plans are made as answers need them.
    pub fn new(descriptor: &MessageDescriptor) -> Self {
        let shape = match descriptor.full_name().strip_prefix("google.protobuf.") {
            Some("Timestamp") => Shape::Timestamp,
            Some("Duration") => Shape::Duration,
            Some(other) if json_out::is_special_well_known_type(other) => Shape::Declined,
            _ if descriptor.extensions().len() > 0 => Shape::Declined,
            _ => Shape::Fields(descriptor.fields().map(|field| FieldPlan::new(&field)).collect()),
        };
        Self { shape }
    }
}

impl FieldPlan {
    fn new(field: &FieldDescriptor) -> Self {
        let kind = field.kind();
        let cardinality = if field.is_group() {
            Cardinality::Group
        } else if field.is_map() {
            Cardinality::Map
        } else if field.is_list() {
            Cardinality::List
        } else if field.supports_presence() {
            Cardinality::Present
        } else {
            Cardinality::Implicit
        };
        let rivals = field
            .containing_oneof()
            .map(|oneof| oneof.fields().map(|member| member.number()).filter(|n| *n != field.number()).collect())
            .unwrap_or_default();
        let mut key = Vec::new();
        // Escaping a name into a Vec cannot fail.
        let _ = json_out::string(&mut key, field.json_name());
        key.push(b':');
        let absent = match cardinality {
            Cardinality::List => b"[]".to_vec(),
            Cardinality::Map => b"{}".to_vec(),
            Cardinality::Implicit => {
                let mut absent = Vec::new();
                let _ = json_out::value(&mut absent, &field.default_value(), &kind);
                absent
            }
            // A field with presence is not printed when it is absent.
            Cardinality::Present | Cardinality::Group => Vec::new(),
        };
        Self {
            number: field.number(),
            key: key.into(),
            kind,
            cardinality,
            rivals,
            absent: absent.into(),
            message: OnceLock::new(),
        }
    }

    /// The plan of its message type; None for a field that is not a message.
    fn message_plan(&self) -> Option<&MessagePlan> {
        let Kind::Message(descriptor) = &self.kind else { return None };
        Some(self.message.get_or_init(|| Box::new(MessagePlan::new(descriptor))))
    }
}

/// Writes the message encoded in `wire` as proto3 JSON. On [`Unsupported`], `out` is as it was.
pub fn write_message(out: &mut Vec<u8>, plan: &MessagePlan, wire: &[u8]) -> Result<(), Unsupported> {
    let start = out.len();
    let written = message(out, plan, wire, RECURSION_LIMIT);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// Writes the JSON of the message field `number` of the message encoded in `wire` (a `response_body`), as
/// printing the decoded field gives: the whole message is read, so bytes that would not decode are declined
/// wherever they are. On [`Unsupported`], `out` is as it was.
pub fn write_field(out: &mut Vec<u8>, plan: &MessagePlan, number: u32, wire: &[u8]) -> Result<(), Unsupported> {
    let Shape::Fields(fields) = &plan.shape else { return Err(Unsupported) };
    let field = fields.iter().find(|field| field.number == number).ok_or(Unsupported)?;
    let inner = field.message_plan().filter(|_| field.cardinality == Cardinality::Present).ok_or(Unsupported)?;
    let start = out.len();
    let mut printed_at = None;
    let written = object(out, fields, wire, RECURSION_LIMIT - 1, Some((number, &mut printed_at)));
    match (written, printed_at) {
        (Ok(()), Some(range)) => {
            out.copy_within(range.clone(), start);
            out.truncate(start + range.len());
            Ok(())
        }
        // Absent: the field's default, an empty message.
        (Ok(()), None) => {
            out.truncate(start);
            write_message(out, inner, &[])
        }
        (Err(unsupported), _) => {
            out.truncate(start);
            Err(unsupported)
        }
    }
}

/// Where a field's occurrence lies in the bytes.
#[derive(Debug, Clone)]
struct Occurrence {
    number: u32,
    wire_type: WireType,
    /// The payload: the varint's or fixed value's bytes, or what a length prefix delimits.
    payload: std::ops::Range<usize>,
    /// Its place among all occurrences in the bytes, for "the last one wins" across a oneof's members.
    order: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireType {
    Varint,
    Fixed64,
    LengthDelimited,
    Fixed32,
}

fn message(out: &mut Vec<u8>, plan: &MessagePlan, wire: &[u8], depth: u32) -> Result<(), Unsupported> {
    let depth = depth.checked_sub(1).ok_or(Unsupported)?;
    let printed = match &plan.shape {
        Shape::Fields(fields) => return object(out, fields, wire, depth, None),
        Shape::Timestamp => seconds_and_nanos(wire).is_some_and(|(s, n)| json_out::timestamp_at(out, s, n)),
        Shape::Duration => seconds_and_nanos(wire).is_some_and(|(s, n)| json_out::duration_at(out, s, n)),
        Shape::Declined => false,
    };
    if printed { Ok(()) } else { Err(Unsupported) }
}

/// A field whose printed value's place in the output is wanted, and where to put it.
type Capture<'a> = Option<(u32, &'a mut Option<std::ops::Range<usize>>)>;

/// A message as an object of its fields.
fn object(
    out: &mut Vec<u8>,
    fields: &[FieldPlan],
    wire: &[u8],
    depth: u32,
    mut capture: Capture<'_>,
) -> Result<(), Unsupported> {
    let occurrences = scan(wire)?;
    let mut replaced = Vec::new();
    out.push(b'{');
    let mut first = true;
    for field in fields {
        let found = of_field(&occurrences, field.number);
        if matches!(field.cardinality, Cardinality::Present) {
            let Some(last) = found.last() else { continue };
            let later_rival = field
                .rivals
                .iter()
                .any(|rival| of_field(&occurrences, *rival).last().is_some_and(|other| other.order > last.order));
            if later_rival {
                replaced.push((field, found));
                continue;
            }
        }
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(&field.key);
        let value_start = out.len();
        field_value(out, field, found, wire, depth)?;
        if let Some((number, printed_at)) = &mut capture
            && *number == field.number
        {
            **printed_at = Some(value_start..out.len());
        }
    }
    out.push(b'}');
    // A oneof member that a later one replaced is not printed, but must still be well-formed.
    let mut scratch = Vec::new();
    for (field, found) in replaced {
        for occurrence in found {
            scratch.clear();
            field_value(&mut scratch, field, std::slice::from_ref(occurrence), wire, depth)?;
        }
    }
    Ok(())
}

fn field_value(
    out: &mut Vec<u8>,
    field: &FieldPlan,
    found: &[Occurrence],
    wire: &[u8],
    depth: u32,
) -> Result<(), Unsupported> {
    match field.cardinality {
        Cardinality::Group => Err(Unsupported),
        // Only an empty map: prost-reflect prints a map's entries in its hash order.
        Cardinality::Map if !found.is_empty() => Err(Unsupported),
        Cardinality::List if !found.is_empty() => list(out, field, found, wire, depth),
        Cardinality::Map | Cardinality::List => {
            out.extend_from_slice(&field.absent);
            Ok(())
        }
        Cardinality::Present | Cardinality::Implicit => match found {
            [] => {
                out.extend_from_slice(&field.absent);
                Ok(())
            }
            // A message that occurs more than once is the merge of its occurrences.
            [_, _, ..] if matches!(field.kind, Kind::Message(_)) => Err(Unsupported),
            [earlier @ .., last] => {
                // The last occurrence wins; the earlier ones must still be well-formed.
                let mut scratch = Vec::new();
                for occurrence in earlier {
                    single(&mut scratch, field, occurrence, wire, depth)?;
                    scratch.clear();
                }
                single(out, field, last, wire, depth)
            }
        },
    }
}

fn list(
    out: &mut Vec<u8>,
    field: &FieldPlan,
    found: &[Occurrence],
    wire: &[u8],
    depth: u32,
) -> Result<(), Unsupported> {
    out.push(b'[');
    let mut first = true;
    for occurrence in found {
        if occurrence.wire_type == WireType::LengthDelimited && is_packable(&field.kind) {
            let packed = &wire[occurrence.payload.clone()];
            let mut at = 0;
            while at < packed.len() {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                let value = scalar(&field.kind, expected_wire_type(&field.kind), packed, &mut at)?;
                print(out, &value, &field.kind)?;
            }
        } else {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            single(out, field, occurrence, wire, depth)?;
        }
    }
    out.push(b']');
    Ok(())
}

/// One value that occupies one occurrence (not a packed run).
fn single(
    out: &mut Vec<u8>,
    field: &FieldPlan,
    occurrence: &Occurrence,
    wire: &[u8],
    depth: u32,
) -> Result<(), Unsupported> {
    if occurrence.wire_type != expected_wire_type(&field.kind) {
        return Err(Unsupported);
    }
    let payload = &wire[occurrence.payload.clone()];
    match &field.kind {
        Kind::Message(_) => message(out, field.message_plan().ok_or(Unsupported)?, payload, depth),
        Kind::String => {
            let text = std::str::from_utf8(payload).map_err(|_| Unsupported)?;
            json_out::string(out, text).map_err(|_| Unsupported)
        }
        Kind::Bytes => {
            out.push(b'"');
            let at = out.len();
            out.resize(at + base64::encoded_len(payload.len(), true).ok_or(Unsupported)?, 0);
            base64::engine::general_purpose::STANDARD.encode_slice(payload, &mut out[at..]).map_err(|_| Unsupported)?;
            out.push(b'"');
            Ok(())
        }
        kind => {
            let mut at = 0;
            let value = scalar(kind, occurrence.wire_type, payload, &mut at)?;
            print(out, &value, kind)
        }
    }
}

fn print(out: &mut Vec<u8>, value: &Value, kind: &Kind) -> Result<(), Unsupported> {
    json_out::value(out, value, kind).map_err(|_| Unsupported)
}

/// Whether a repeated field of `kind` may be packed: every scalar that is not length-delimited.
fn is_packable(kind: &Kind) -> bool {
    expected_wire_type(kind) != WireType::LengthDelimited
}

/// The wire type a field of `kind` is written with, unpacked.
fn expected_wire_type(kind: &Kind) -> WireType {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => WireType::Fixed64,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => WireType::Fixed32,
        Kind::String | Kind::Bytes | Kind::Message(_) => WireType::LengthDelimited,
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => WireType::Varint,
    }
}

/// Reads one scalar of `kind` at `at` in `bytes`, as prost reads it (varints truncated to 32 bits where the
/// type is 32 bits wide, zigzag for the sint types).
fn scalar(kind: &Kind, wire_type: WireType, bytes: &[u8], at: &mut usize) -> Result<Value, Unsupported> {
    if wire_type != expected_wire_type(kind) {
        return Err(Unsupported);
    }
    Ok(match wire_type {
        WireType::Varint => {
            let raw = varint(bytes, at)?;
            // Truncation to 32 bits is the wire format's rule for the 32-bit varint types.
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            match kind {
                Kind::Int32 => Value::I32(raw as i32),
                Kind::Int64 => Value::I64(raw as i64),
                Kind::Uint32 => Value::U32(raw as u32),
                Kind::Uint64 => Value::U64(raw),
                Kind::Sint32 => {
                    let raw = raw as u32;
                    Value::I32(((raw >> 1) as i32) ^ -((raw & 1) as i32))
                }
                Kind::Sint64 => Value::I64(((raw >> 1) as i64) ^ -((raw & 1) as i64)),
                Kind::Bool => Value::Bool(raw != 0),
                Kind::Enum(_) => Value::EnumNumber(raw as i32),
                _ => return Err(Unsupported),
            }
        }
        WireType::Fixed32 => {
            let raw = fixed::<4>(bytes, at)?;
            match kind {
                Kind::Fixed32 => Value::U32(u32::from_le_bytes(raw)),
                Kind::Sfixed32 => Value::I32(i32::from_le_bytes(raw)),
                Kind::Float => Value::F32(f32::from_le_bytes(raw)),
                _ => return Err(Unsupported),
            }
        }
        WireType::Fixed64 => {
            let raw = fixed::<8>(bytes, at)?;
            match kind {
                Kind::Fixed64 => Value::U64(u64::from_le_bytes(raw)),
                Kind::Sfixed64 => Value::I64(i64::from_le_bytes(raw)),
                Kind::Double => Value::F64(f64::from_le_bytes(raw)),
                _ => return Err(Unsupported),
            }
        }
        WireType::LengthDelimited => return Err(Unsupported),
    })
}

/// A Timestamp's or Duration's `seconds` (field 1) and `nanos` (field 2), the last occurrence of each
/// winning; None for anything but well-formed varints in them.
fn seconds_and_nanos(wire: &[u8]) -> Option<(i64, i32)> {
    let (mut seconds, mut nanos) = (0, 0);
    for occurrence in (Occurrences { wire, at: 0, order: 0 }) {
        let occurrence = occurrence.ok()?;
        if occurrence.number > 2 {
            continue;
        }
        if occurrence.wire_type != WireType::Varint {
            return None;
        }
        let raw = varint(wire, &mut occurrence.payload.start.clone()).ok()?;
        // As prost reads int64 and int32 varints: two's complement, the int32 truncated.
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        if occurrence.number == 1 {
            seconds = raw as i64;
        } else {
            nanos = raw as i32;
        }
    }
    Some((seconds, nanos))
}

/// Every field occurrence in `wire`, sorted by field number (in wire order within a number); Unsupported for
/// malformed bytes, groups and field numbers outside 1..2^29.
fn scan(wire: &[u8]) -> Result<Vec<Occurrence>, Unsupported> {
    let mut found = Vec::with_capacity(8);
    for occurrence in (Occurrences { wire, at: 0, order: 0 }) {
        found.push(occurrence?);
    }
    // Stable: occurrences of one field keep their wire order.
    found.sort_by_key(|occurrence| occurrence.number);
    Ok(found)
}

/// The occurrences in a message's bytes, in wire order. After an error, it ends.
struct Occurrences<'a> {
    wire: &'a [u8],
    at: usize,
    order: usize,
}

impl Iterator for Occurrences<'_> {
    type Item = Result<Occurrence, Unsupported>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.wire.len() {
            return None;
        }
        let next = self.read();
        if next.is_err() {
            self.at = self.wire.len();
        }
        self.order += 1;
        Some(next)
    }
}

impl Occurrences<'_> {
    fn read(&mut self) -> Result<Occurrence, Unsupported> {
        const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;
        let (wire, at) = (self.wire, &mut self.at);
        let key = varint(wire, at)?;
        let number = key >> 3;
        if !(1..=MAX_FIELD_NUMBER).contains(&number) {
            return Err(Unsupported);
        }
        let number = u32::try_from(number).map_err(|_| Unsupported)?;
        let mut start = *at;
        let wire_type = match key & 7 {
            0 => {
                varint(wire, at)?;
                WireType::Varint
            }
            1 => {
                take(wire, at, 8)?;
                WireType::Fixed64
            }
            2 => {
                let length = usize::try_from(varint(wire, at)?).map_err(|_| Unsupported)?;
                start = *at;
                take(wire, at, length)?;
                WireType::LengthDelimited
            }
            5 => {
                take(wire, at, 4)?;
                WireType::Fixed32
            }
            // Groups (3, 4) and the undefined wire types 6 and 7.
            _ => return Err(Unsupported),
        };
        Ok(Occurrence { number, wire_type, payload: start..*at, order: self.order })
    }
}

/// The occurrences of field `number`, in wire order.
fn of_field(occurrences: &[Occurrence], number: u32) -> &[Occurrence] {
    let start = occurrences.partition_point(|occurrence| occurrence.number < number);
    let end = start + occurrences[start..].partition_point(|occurrence| occurrence.number == number);
    &occurrences[start..end]
}

/// The next `length` bytes at `at`.
fn take<'a>(bytes: &'a [u8], at: &mut usize, length: usize) -> Result<&'a [u8], Unsupported> {
    let end = at.checked_add(length).filter(|end| *end <= bytes.len()).ok_or(Unsupported)?;
    let taken = &bytes[*at..end];
    *at = end;
    Ok(taken)
}

/// The next `N` bytes at `at`, as a fixed-width (little-endian) value's bytes.
fn fixed<const N: usize>(bytes: &[u8], at: &mut usize) -> Result<[u8; N], Unsupported> {
    take(bytes, at, N)?.try_into().map_err(|_| Unsupported)
}

/// A base-128 varint of at most 10 bytes, as prost accepts them (the tenth byte at most 1).
fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, Unsupported> {
    let mut value = 0u64;
    for index in 0..10 {
        let byte = *bytes.get(*at).ok_or(Unsupported)?;
        *at += 1;
        if index == 9 && byte > 1 {
            return Err(Unsupported);
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Unsupported)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    use super::super::json_out::tests::random_message;
    use super::*;

    /// The conformance messages (every scalar, maps, oneofs, well-known types) and the wire test messages
    /// (lists packed and not, proto2 presence and extensions).
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let files = protox::compile(
            [root.join("tests/protos/wire/lists.proto"), root.join("tests/protos/wire/legacy.proto")],
            [root.join("tests/protos"), root.join("proto")],
        )
        .expect("the wire test protos compile");
        DescriptorPool::from_file_descriptor_set(files).expect("the wire test descriptors are valid")
    });

    const MESSAGES: [&str; 7] = [
        "conformance.Echo",
        "conformance.Scalars",
        "conformance.WellKnown",
        "conformance.Nested",
        "wire.Lists",
        "wire.Legacy",
        "wire.Plain",
    ];

    fn descriptor(name: &str) -> MessageDescriptor {
        POOL.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the test pool"))
    }

    /// What the gateway printed before this writer, and prints when it declines: decode, then `json_out`.
    /// None when the bytes do not decode or the message has no proto3 JSON form.
    fn decoded_json(descriptor: &MessageDescriptor, wire: &[u8]) -> Option<String> {
        let message = DynamicMessage::decode(descriptor.clone(), wire).ok()?;
        let mut out = Vec::new();
        json_out::write_message(&mut out, &message).ok()?;
        String::from_utf8(out).ok()
    }

    fn wire_json(descriptor: &MessageDescriptor, wire: &[u8]) -> Result<String, Unsupported> {
        let mut out = b"prefix".to_vec();
        let written = write_message(&mut out, &MessagePlan::new(descriptor), wire);
        if written.is_err() {
            assert_eq!(out, b"prefix", "a declined message leaves the output as it was");
        }
        written.map(|()| String::from_utf8_lossy(&out[6..]).into_owned())
    }

    /// The writer prints exactly what decoding and printing gives, or declines; it never prints bytes that do
    /// not decode. Returns whether it printed.
    fn agrees(descriptor: &MessageDescriptor, wire: &[u8]) -> Result<bool, TestCaseError> {
        let expected = decoded_json(descriptor, wire);
        match wire_json(descriptor, wire) {
            Err(Unsupported) => Ok(false),
            Ok(ours) => {
                prop_assert_eq!(Some(&ours), expected.as_ref(), "{} from {:02x?}", descriptor.full_name(), wire);
                Ok(true)
            }
        }
    }

    proptest! {
        #[test]
        fn prints_what_decoding_prints(seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            for name in MESSAGES {
                let descriptor = descriptor(name);
                let message = random_message(&descriptor, &mut rng, 0);
                agrees(&descriptor, &message.encode_to_vec())?;
            }
        }

        /// Two encodings one after the other are one message to protobuf: scalars from the second, lists of
        /// both, messages merged, a oneof's later member.
        #[test]
        fn reads_concatenated_messages_as_protobuf_merges_them(seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            for name in MESSAGES {
                let descriptor = descriptor(name);
                let mut wire = random_message(&descriptor, &mut rng, 0).encode_to_vec();
                wire.extend(random_message(&descriptor, &mut rng, 0).encode_to_vec());
                agrees(&descriptor, &wire)?;
            }
        }

        #[test]
        fn declines_or_agrees_on_damaged_bytes(seed in any::<u64>(), cuts in proptest::collection::vec(any::<(u16, u8)>(), 1..4)) {
            let mut rng = fastrand::Rng::with_seed(seed);
            for name in MESSAGES {
                let descriptor = descriptor(name);
                let mut wire = random_message(&descriptor, &mut rng, 0).encode_to_vec();
                if wire.is_empty() {
                    continue;
                }
                for (at, byte) in &cuts {
                    let at = usize::from(*at) % wire.len();
                    if byte % 4 == 0 {
                        wire.truncate(at);
                    } else {
                        wire[at] = *byte;
                    }
                    if wire.is_empty() {
                        break;
                    }
                }
                agrees(&descriptor, &wire)?;
            }
        }

        /// A `response_body` naming a message field: that field's JSON, as printing the decoded field gives.
        #[test]
        fn prints_one_message_field_as_its_decoded_value(seed in any::<u64>(), twice in any::<bool>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let echo = descriptor("conformance.Echo");
            let plan = MessagePlan::new(&echo);
            let mut wire = random_message(&echo, &mut rng, 0).encode_to_vec();
            if twice {
                wire.extend(random_message(&echo, &mut rng, 0).encode_to_vec());
            }
            for name in ["nested", "scalars", "as_nested"] {
                let field = echo.get_field_by_name(name).expect("an Echo field");
                let expected = DynamicMessage::decode(echo.clone(), wire.as_slice()).ok().and_then(|message| {
                    let value = message.get_field(&field);
                    let mut out = Vec::new();
                    json_out::write_message(&mut out, value.as_message()?).ok()?;
                    String::from_utf8(out).ok()
                });
                let mut out = Vec::new();
                if write_field(&mut out, &plan, field.number(), &wire).is_ok() {
                    prop_assert_eq!(Some(String::from_utf8_lossy(&out).into_owned()), expected, "{}", name);
                } else {
                    prop_assert!(out.is_empty(), "a declined field leaves the output as it was");
                }
            }
        }
    }

    fn encoded(name: &str, fill: impl FnOnce(&mut DynamicMessage)) -> (MessageDescriptor, Vec<u8>) {
        let descriptor = descriptor(name);
        let mut message = DynamicMessage::new(descriptor.clone());
        fill(&mut message);
        (descriptor, message.encode_to_vec())
    }

    #[test]
    fn prints_the_common_shapes_itself() {
        let (scalars, wire) = encoded("conformance.Scalars", |m| {
            m.set_field_by_name("f_int64", Value::I64(-5));
            m.set_field_by_name("f_string", Value::String("é\"\n".into()));
            m.set_field_by_name("f_bytes", Value::Bytes(vec![0xff, 0].into()));
            m.set_field_by_name("f_sint32", Value::I32(-3));
            m.set_field_by_name("f_float", Value::F32(f32::NAN));
        });
        let json = wire_json(&scalars, &wire).expect("scalars are printed from the wire");
        assert_eq!(Some(&json), decoded_json(&scalars, &wire).as_ref());
        assert!(json.contains(r#""fInt64":"-5""#) && json.contains(r#""fSint32":-3"#), "{json}");
        assert!(json.contains(r#""fString":"é\"\n""#) && json.contains(r#""fBytes":"/wA=""#), "{json}");

        let (lists, wire) = encoded("wire.Lists", |m| {
            m.set_field_by_name("ints", Value::List(vec![Value::I32(-1), Value::I32(300)]));
            m.set_field_by_name("big", Value::List(vec![Value::U64(u64::MAX)]));
            let mut item = DynamicMessage::new(descriptor("conformance.Nested"));
            item.set_field_by_name("id", Value::String("a".into()));
            m.set_field_by_name("items", Value::List(vec![Value::Message(item.clone()), Value::Message(item)]));
            let mut at = DynamicMessage::new(POOL.get_message_by_name("google.protobuf.Timestamp").expect("wkt"));
            at.set_field_by_name("seconds", Value::I64(1));
            m.set_field_by_name("times", Value::List(vec![Value::Message(at)]));
            m.set_field_by_name("number", Value::I64(-9));
        });
        let json = wire_json(&lists, &wire).expect("lists are printed from the wire");
        assert_eq!(Some(&json), decoded_json(&lists, &wire).as_ref());
        assert!(json.contains(r#""ints":[-1,300]"#) && json.contains(r#""times":["1970-01-01T00:00:01Z"]"#), "{json}");
        assert!(json.contains(r#""number":"-9""#) && !json.contains("picked"), "{json}");

        // proto2: only what is set, whatever the declared defaults.
        let (legacy, wire) = encoded("wire.Legacy", |m| m.set_field_by_name("count", Value::I32(0)));
        assert_eq!(wire_json(&descriptor("wire.Plain"), &wire).as_deref(), Ok(r#"{"count":0}"#));
        assert_eq!(decoded_json(&legacy, &wire).as_deref(), Some(r#"{"count":0,"totals":[]}"#));
    }

    #[test]
    fn reads_protobufs_rules_for_repeated_occurrences() {
        let lists = descriptor("wire.Lists");
        // ints packed [1, 2], then ints unpacked 3; number 5, then picked {}: the oneof's later member wins.
        let wire = [0x0a, 0x02, 0x01, 0x02, 0x08, 0x03, 0x61, 5, 0, 0, 0, 0, 0, 0, 0, 0x5a, 0x00];
        let json = wire_json(&lists, &wire).expect("printed from the wire");
        assert_eq!(Some(&json), decoded_json(&lists, &wire).as_ref());
        assert!(json.contains(r#""ints":[1,2,3]"#) && json.contains(r#""picked":{"#), "{json}");
        assert!(!json.contains(r#""number""#), "the replaced member is not printed: {json}");

        // A scalar twice: the last wins. A message field twice is merged by protobuf: declined.
        let scalars = descriptor("conformance.Scalars");
        assert_eq!(wire_json(&scalars, &[0x18, 0x01, 0x18, 0x02]).map(|json| json.contains(r#""fInt32":2"#)), Ok(true));
        let echo = descriptor("conformance.Echo");
        assert_eq!(wire_json(&echo, &[0x1a, 0x02, 0x0a, 0x00, 0x1a, 0x00]), Err(Unsupported));
        // An earlier occurrence that is not UTF-8 makes the message undecodable, even though the last wins.
        assert_eq!(decoded_json(&scalars, &[0x72, 0x01, 0xff, 0x72, 0x00]), None);
        assert_eq!(wire_json(&scalars, &[0x72, 0x01, 0xff, 0x72, 0x00]), Err(Unsupported));
    }

    #[test]
    fn declines_what_it_does_not_print() {
        let echo = descriptor("conformance.Echo");
        let (_, with_map) = encoded("conformance.Echo", |m| {
            m.set_field_by_name(
                "counts",
                Value::Map([(prost_reflect::MapKey::String("a".into()), Value::I64(1))].into()),
            );
        });
        assert_eq!(wire_json(&echo, &with_map), Err(Unsupported), "maps print in prost-reflect's order");
        let (_, with_empty) = encoded("conformance.WellKnown", |m| {
            let empty = DynamicMessage::new(POOL.get_message_by_name("google.protobuf.Empty").expect("wkt"));
            m.set_field_by_name("nothing", Value::Message(empty));
        });
        assert_eq!(
            wire_json(&descriptor("conformance.WellKnown"), &with_empty),
            Err(Unsupported),
            "well-known types other than Timestamp and Duration"
        );
        let legacy = descriptor("wire.Legacy");
        assert_eq!(wire_json(&legacy, &[0x08, 0x01]), Err(Unsupported), "a message with extensions");
        // Malformed: a length beyond the end, a group, field number 0, an overlong varint.
        let scalars = descriptor("conformance.Scalars");
        for wire in [
            &[0x72, 0x05, b'a'][..],
            &[0x0b, 0x0c],
            &[0x00, 0x01],
            &[0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ] {
            assert_eq!(wire_json(&scalars, wire), Err(Unsupported), "{wire:02x?}");
            assert_eq!(decoded_json(&scalars, wire), None, "prost refuses {wire:02x?} too");
        }
    }
}
