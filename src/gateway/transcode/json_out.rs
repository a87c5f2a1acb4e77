//! Canonical proto3 JSON of a message, written straight into the response buffer.
//!
//! prost-reflect's serde serializer is correct but generic: it prints each Timestamp and Duration by encoding
//! it to bytes and decoding it again as a `prost_types` message (thousands of instructions per field, half of
//! what rendering a user costs), and every value goes through serde's dispatch. This writer walks the message
//! itself, with the options the gateway always renders with ([`super::SERIALIZE`]: `json_name`s, fields
//! without presence printed even at their default, 64-bit integers as strings, enums by name), prints
//! Timestamp and Duration directly, and hands the other well-known types (Any, Struct, Value, the wrappers,
//! FieldMask, Empty) and any out-of-range Timestamp or Duration to prost-reflect, so that their rules live in
//! one place. A differential property test holds the two to the same output.

use std::io::Write as _;

use base64::Engine as _;
use prost_reflect::{DynamicMessage, Kind, MapKey, ReflectMessage, Value};
use serde::Serializer as _;

use super::SERIALIZE;
use crate::digits::decimal;

/// Writes `message` as proto3 JSON; fails where prost-reflect fails (a malformed well-known type).
pub fn write_message(out: &mut Vec<u8>, message: &DynamicMessage) -> Result<(), serde_json::Error> {
    let descriptor = message.descriptor();
    let name = descriptor.full_name();
    if let Some(wkt) = name.strip_prefix("google.protobuf.") {
        let printed = match wkt {
            "Timestamp" => timestamp(out, message),
            "Duration" => duration(out, message),
            _ => false,
        };
        if printed {
            return Ok(());
        }
        if is_special_well_known_type(wkt) {
            return message.serialize_with_options(&mut serde_json::Serializer::new(&mut *out), &SERIALIZE);
        }
    }
    out.push(b'{');
    let mut first = true;
    for field in descriptor.fields() {
        if field.supports_presence() && !message.has_field(&field) {
            continue;
        }
        separator(out, &mut first);
        string(out, field.json_name())?;
        out.push(b':');
        value(out, &message.get_field(&field), &field.kind())?;
    }
    for (extension, extension_value) in message.extensions() {
        separator(out, &mut first);
        string(out, extension.json_name())?;
        out.push(b':');
        value(out, extension_value, &extension.kind())?;
    }
    out.push(b'}');
    Ok(())
}

/// The well-known types whose JSON is not an object of their fields.
pub(super) fn is_special_well_known_type(name: &str) -> bool {
    matches!(
        name,
        "Any"
            | "Timestamp"
            | "Duration"
            | "Struct"
            | "Value"
            | "ListValue"
            | "FieldMask"
            | "Empty"
            | "DoubleValue"
            | "FloatValue"
            | "Int64Value"
            | "UInt64Value"
            | "Int32Value"
            | "UInt32Value"
            | "BoolValue"
            | "StringValue"
            | "BytesValue"
    )
}

fn separator(out: &mut Vec<u8>, first: &mut bool) {
    if !std::mem::take(first) {
        out.push(b',');
    }
}

/// One value of a field of `kind` (a list's or a map's kind is its elements').
pub(super) fn value(out: &mut Vec<u8>, value: &Value, kind: &Kind) -> Result<(), serde_json::Error> {
    match value {
        Value::Bool(value) => out.extend_from_slice(if *value { b"true" } else { b"false" }),
        Value::I32(value) => signed(out, i64::from(*value)),
        Value::U32(value) => decimal(out, u64::from(*value), 1),
        Value::I64(value) => {
            out.push(b'"');
            signed(out, *value);
            out.push(b'"');
        }
        Value::U64(value) => {
            out.push(b'"');
            decimal(out, *value, 1);
            out.push(b'"');
        }
        Value::F32(value) if value.is_finite() => serde_json::Serializer::new(&mut *out).serialize_f32(*value)?,
        Value::F64(value) if value.is_finite() => serde_json::Serializer::new(&mut *out).serialize_f64(*value)?,
        Value::F32(value) => non_finite(out, f64::from(*value)),
        Value::F64(value) => non_finite(out, *value),
        Value::String(value) => string(out, value)?,
        Value::Bytes(value) => {
            out.push(b'"');
            out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(value).as_bytes());
            out.push(b'"');
        }
        Value::EnumNumber(number) => match kind {
            Kind::Enum(enum_type) if enum_type.full_name() == "google.protobuf.NullValue" => {
                out.extend_from_slice(b"null");
            }
            Kind::Enum(enum_type) => match enum_type.get_value(*number) {
                Some(known) => string(out, known.name())?,
                None => write_display(out, number),
            },
            _ => write_display(out, number),
        },
        Value::Message(message) => write_message(out, message)?,
        Value::List(values) => {
            out.push(b'[');
            let mut first = true;
            for element in values {
                separator(out, &mut first);
                self::value(out, element, kind)?;
            }
            out.push(b']');
        }
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) if entry.is_map_entry() => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            out.push(b'{');
            let mut first = true;
            for (key, entry_value) in entries {
                separator(out, &mut first);
                match key {
                    MapKey::Bool(key) => quoted(out, key),
                    MapKey::I32(key) => quoted(out, key),
                    MapKey::I64(key) => quoted(out, key),
                    MapKey::U32(key) => quoted(out, key),
                    MapKey::U64(key) => quoted(out, key),
                    MapKey::String(key) => string(out, key)?,
                }
                out.push(b':');
                self::value(out, entry_value, &value_kind)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// An integer in decimal, without going through `core::fmt` (a few hundred instructions a number).
fn signed(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    decimal(out, value.unsigned_abs(), 1);
}

fn write_display(out: &mut Vec<u8>, value: &impl std::fmt::Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

fn quoted(out: &mut Vec<u8>, value: &impl std::fmt::Display) {
    let _ = write!(out, "\"{value}\"");
}

fn non_finite(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(if value.is_nan() {
        b"\"NaN\""
    } else if value > 0.0 {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    });
}

/// A JSON string, escaped as serde_json escapes it.
pub(super) fn string(out: &mut Vec<u8>, text: &str) -> Result<(), serde_json::Error> {
    serde_json::Serializer::new(&mut *out).serialize_str(text)
}

/// The `seconds` and `nanos` fields of a Timestamp or Duration.
fn seconds_and_nanos(message: &DynamicMessage) -> Option<(i64, i32)> {
    let seconds = message.get_field_by_number(1)?.as_i64()?;
    let nanos = message.get_field_by_number(2)?.as_i32()?;
    Some((seconds, nanos))
}

/// `"1972-01-01T10:00:20.021Z"` (RFC 3339 in UTC, with 0, 3, 6 or 9 fractional digits); false, printing
/// nothing, for a timestamp outside 0001-01-01 to 9999-12-31 or with nanos outside 0..1e9.
fn timestamp(out: &mut Vec<u8>, message: &DynamicMessage) -> bool {
    seconds_and_nanos(message).is_some_and(|(seconds, nanos)| timestamp_at(out, seconds, nanos))
}

/// A Timestamp of `seconds` and `nanos`, as [`timestamp`] prints it.
pub(super) fn timestamp_at(out: &mut Vec<u8>, seconds: i64, nanos: i32) -> bool {
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    if !RANGE.contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return false;
    }
    out.push(b'"');
    crate::civil_date::write_date_time(out, seconds);
    fraction(out, nanos.unsigned_abs());
    out.extend_from_slice(b"Z\"");
    true
}

/// `"-1.500s"`; false, printing nothing, outside ±10,000 years or when seconds and nanos differ in sign.
fn duration(out: &mut Vec<u8>, message: &DynamicMessage) -> bool {
    seconds_and_nanos(message).is_some_and(|(seconds, nanos)| duration_at(out, seconds, nanos))
}

/// A Duration of `seconds` and `nanos`, as [`duration`] prints it.
pub(super) fn duration_at(out: &mut Vec<u8>, seconds: i64, nanos: i32) -> bool {
    const MAX_SECONDS: u64 = 315_576_000_000;
    let mixed_signs = (seconds < 0 && nanos > 0) || (seconds > 0 && nanos < 0);
    if seconds.unsigned_abs() > MAX_SECONDS || nanos.unsigned_abs() >= 1_000_000_000 || mixed_signs {
        return false;
    }
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    out.push(b'"');
    out.extend_from_slice(sign.as_bytes());
    decimal(out, seconds.unsigned_abs(), 1);
    fraction(out, nanos.unsigned_abs());
    out.extend_from_slice(b"s\"");
    true
}

/// The fractional seconds of `nanos` with as few of 0, 3, 6 or 9 digits as hold it exactly.
fn fraction(out: &mut Vec<u8>, nanos: u32) {
    let (value, width) = match nanos {
        0 => return,
        _ if nanos.is_multiple_of(1_000_000) => (nanos / 1_000_000, 3),
        _ if nanos.is_multiple_of(1_000) => (nanos / 1_000, 6),
        _ => (nanos, 9),
    };
    out.push(b'.');
    decimal(out, u64::from(value), width);
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use prost_reflect::{DescriptorPool, FieldDescriptor, MessageDescriptor};

    use super::*;

    /// The conformance test's messages: every scalar, enums, maps, oneofs, `optional`, nesting and every
    /// well-known type.
    pub(in crate::gateway::transcode) static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let files = protox::compile(
            [root.join("tests/protos/conformance/conformance.proto")],
            [root.join("tests/protos"), root.join("proto")],
        )
        .expect("the conformance proto compiles");
        DescriptorPool::from_file_descriptor_set(files).expect("the conformance descriptors are valid")
    });

    fn prost_reflect_json(message: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        message.serialize_with_options(&mut serde_json::Serializer::new(&mut out), &SERIALIZE)?;
        Ok(out)
    }

    fn our_json(message: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        write_message(&mut out, message)?;
        Ok(out)
    }

    pub(in crate::gateway::transcode) fn random_message(
        descriptor: &MessageDescriptor,
        rng: &mut fastrand::Rng,
        depth: u32,
    ) -> DynamicMessage {
        let mut message = DynamicMessage::new(descriptor.clone());
        if matches!(descriptor.full_name(), "google.protobuf.Timestamp" | "google.protobuf.Duration") {
            let seconds = [0, -1, 1, -62_135_596_800, 253_402_300_799, -62_135_596_801, 253_402_300_800, i64::MIN]
                [rng.usize(..8)];
            let seconds = if rng.bool() { rng.i64(-62_135_596_800..=253_402_300_799) } else { seconds };
            let nanos = [0, 1, -1, 999_999_999, 1_000_000_000, -999_999_999, 5_000_000, 7_000][rng.usize(..8)];
            let nanos = if rng.bool() { rng.i32(0..1_000_000_000) } else { nanos };
            message.set_field_by_number(1, Value::I64(seconds));
            message.set_field_by_number(2, Value::I32(nanos));
            return message;
        }
        for field in descriptor.fields() {
            if rng.bool() {
                message.set_field(&field, random_value(&field, rng, depth));
            }
        }
        message
    }

    fn random_value(field: &FieldDescriptor, rng: &mut fastrand::Rng, depth: u32) -> Value {
        let kind = field.kind();
        if field.is_map() {
            let Kind::Message(entry) = &kind else { unreachable!("a map field's kind is its entry") };
            let (key_field, value_field) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let entries = (0..rng.usize(..4))
                .filter_map(|_| {
                    let key = random_single(&key_field.kind(), rng, depth).into_map_key()?;
                    Some((key, random_single(&value_field.kind(), rng, depth)))
                })
                .collect();
            Value::Map(entries)
        } else if field.is_list() {
            Value::List((0..rng.usize(..4)).map(|_| random_single(&kind, rng, depth)).collect())
        } else {
            random_single(&kind, rng, depth)
        }
    }

    fn random_single(kind: &Kind, rng: &mut fastrand::Rng, depth: u32) -> Value {
        let special = [0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN_POSITIVE, 1e21];
        let double = special[rng.usize(..special.len())];
        match kind {
            Kind::Double => Value::F64(if rng.bool() { (rng.f64() - 0.5) * 1e6 } else { double }),
            Kind::Float => Value::F32(if rng.bool() { (rng.f32() - 0.5) * 1e6 } else { double as f32 }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(rng.i32(..)),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(rng.i64(..)),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.u32(..)),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.u64(..)),
            Kind::Bool => Value::Bool(rng.bool()),
            Kind::String => {
                let alphabet = ['a', 'Z', '"', '\\', '\n', '\u{1}', '\u{7f}', 'é', '😀', '/', '<'];
                Value::String((0..rng.usize(..8)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect())
            }
            Kind::Bytes => Value::Bytes((0..rng.usize(..8)).map(|_| rng.u8(..)).collect::<Vec<u8>>().into()),
            Kind::Enum(enum_type) => {
                let numbers: Vec<i32> = enum_type.values().map(|value| value.number()).collect();
                Value::EnumNumber(if rng.u8(..4) == 0 { rng.i32(..) } else { numbers[rng.usize(..numbers.len())] })
            }
            Kind::Message(message) if depth >= 3 => Value::Message(DynamicMessage::new(message.clone())),
            Kind::Message(message) => Value::Message(random_message(message, rng, depth + 1)),
        }
    }

    proptest! {
        /// The same bytes as prost-reflect's serializer (or an error where it errs) for random messages of
        /// every kind of field; a map prints in the same order because it is the same map.
        #[test]
        fn writes_what_prost_reflect_writes(seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            for name in ["conformance.Echo", "conformance.Scalars", "conformance.WellKnown"] {
                let descriptor = POOL.get_message_by_name(name).expect("a conformance message");
                let message = random_message(&descriptor, &mut rng, 0);
                let expected = prost_reflect_json(&message).map_err(|e| e.to_string());
                let ours = our_json(&message).map_err(|e| e.to_string());
                match (&expected, &ours) {
                    (Ok(expected), Ok(ours)) => prop_assert_eq!(
                        String::from_utf8_lossy(ours),
                        String::from_utf8_lossy(expected),
                        "{:?}",
                        message
                    ),
                    _ => prop_assert_eq!(expected.is_err(), ours.is_err(), "{:?} vs {:?} for {:?}", expected, ours, message),
                }
            }
        }
    }

    #[test]
    fn timestamps_and_durations_at_their_edges() {
        let print = |name: &str, seconds: i64, nanos: i32| {
            let descriptor = POOL.get_message_by_name(name).expect("a well-known type");
            let mut message = DynamicMessage::new(descriptor);
            message.set_field_by_number(1, Value::I64(seconds));
            message.set_field_by_number(2, Value::I32(nanos));
            our_json(&message).map(|json| String::from_utf8_lossy(&json).into_owned()).map_err(|e| e.to_string())
        };
        let timestamp = |seconds, nanos| print("google.protobuf.Timestamp", seconds, nanos);
        let duration = |seconds, nanos| print("google.protobuf.Duration", seconds, nanos);
        assert_eq!(timestamp(0, 0).as_deref(), Ok("\"1970-01-01T00:00:00Z\""));
        assert_eq!(timestamp(-62_135_596_800, 0).as_deref(), Ok("\"0001-01-01T00:00:00Z\""));
        assert_eq!(timestamp(253_402_300_799, 999_999_999).as_deref(), Ok("\"9999-12-31T23:59:59.999999999Z\""));
        assert_eq!(timestamp(951_782_400, 21_000_000).as_deref(), Ok("\"2000-02-29T00:00:00.021Z\""));
        assert_eq!(timestamp(-1, 500_000).as_deref(), Ok("\"1969-12-31T23:59:59.000500Z\""));
        assert!(timestamp(253_402_300_800, 0).is_err(), "beyond 9999-12-31");
        assert_eq!(duration(0, 0).as_deref(), Ok("\"0s\""));
        assert_eq!(duration(-1, -500_000_000).as_deref(), Ok("\"-1.500s\""));
        assert_eq!(duration(0, -1).as_deref(), Ok("\"-0.000000001s\""));
        assert_eq!(duration(315_576_000_000, 0).as_deref(), Ok("\"315576000000s\""));
        assert!(duration(315_576_000_001, 0).is_err(), "beyond 10,000 years");
    }
}
