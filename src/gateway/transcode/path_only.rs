//! Requests whose every field comes from the path (`GET /v1/users/{id}`, `DELETE /v1/users/{id}`: no body, no
//! query string) written straight to their wire bytes. The general way builds a `DynamicMessage`, sets the
//! bound fields, encodes it and drops it; for the commonest request a gateway serves, that is a tree built to
//! be thrown away.
//!
//! The bytes decode to the message the general way builds: each bound field in the order of the path, and a
//! field without presence left out when it holds its default (`/v1/items/0` for an `int64 id`), as proto3
//! writes it. With the bindings in field-number order they are prost-reflect's own bytes; in another order, or
//! with two bindings in one oneof (both written, the last wins when read), they decode the same.

use bytes::Bytes;
use prost::encoding;
use prost_reflect::{FieldDescriptor, Kind, Value};

use crate::gateway::error::GatewayError;
use crate::gateway::rules::PathField;
use crate::gateway::template::PathMatch;
use crate::gateway::transcode::{bad_path_value, query};

/// How a route's path variables become a request's wire bytes, when each binds a scalar field of the request
/// message itself. A nested binding (`{user.id}`), a message (a wrapper, a Timestamp) or a repeated field goes
/// the general way.
#[derive(Debug, Clone)]
pub struct PathOnlyPlan {
    fields: Vec<BoundScalar>,
}

/// One binding, read from its descriptor once at load: prost-reflect's accessors look the field up again on
/// every call.
#[derive(Debug, Clone)]
struct BoundScalar {
    field: FieldDescriptor,
    kind: Kind,
    number: u32,
    /// A field with presence is written even when it holds its default.
    presence: bool,
}

impl PathOnlyPlan {
    /// The plan for `path_fields`, or `None` when one of them needs the general way (or when two bind the same
    /// field, which the general way reports as a conflict).
    pub fn new(path_fields: &[PathField]) -> Option<Self> {
        let mut fields: Vec<BoundScalar> = Vec::with_capacity(path_fields.len());
        for binding in path_fields {
            let [field] = binding.path.as_slice() else { return None };
            let kind = field.kind();
            if field.is_list() || field.is_map() || matches!(kind, Kind::Message(_)) {
                return None;
            }
            if fields.iter().any(|bound| bound.number == field.number()) {
                return None;
            }
            fields.push(BoundScalar {
                number: field.number(),
                presence: field.supports_presence(),
                kind,
                field: field.clone(),
            });
        }
        Some(Self { fields })
    }

    /// The request's wire bytes, or `None` when the request has a body or a query string for the general way
    /// to read. A path value that does not parse as its field's type is a 400 with the general way's message.
    pub fn request(&self, path: &PathMatch, query: Option<&str>, body: &[u8]) -> Option<Result<Bytes, GatewayError>> {
        if !body.is_empty() || query.is_some_and(|q| !q.is_empty()) || path.values.len() != self.fields.len() {
            return None;
        }
        let room = path.values.iter().map(|raw| raw.len() + 16).sum();
        let mut wire = Vec::with_capacity(room);
        for (bound, raw) in self.fields.iter().zip(&path.values) {
            if let Err(error) = bound.write(raw, &mut wire)? {
                return Some(Err(error));
            }
        }
        Some(Ok(Bytes::from(wire)))
    }
}

impl BoundScalar {
    /// Appends the field's key and value; `None` declines (the general way then builds the request).
    fn write(&self, raw: &str, wire: &mut Vec<u8>) -> Option<Result<(), GatewayError>> {
        // Strings (ids, names) are the common case: copied as they are, without a `Value` in between.
        if let Kind::String = self.kind {
            if self.presence || !raw.is_empty() {
                encoding::encode_key(self.number, encoding::WireType::LengthDelimited, wire);
                encoding::encode_varint(raw.len() as u64, wire);
                wire.extend_from_slice(raw.as_bytes());
            }
            return Some(Ok(()));
        }
        let value = match query::scalar_value(&self.field, raw) {
            Ok(value) => value,
            Err(e) => return Some(Err(bad_path_value(self.field.name(), &e))),
        };
        if !self.presence && value.is_default_for_field(&self.field) {
            return Some(Ok(()));
        }
        let n = self.number;
        match (&self.kind, value) {
            (Kind::Bool, Value::Bool(v)) => encoding::bool::encode(n, &v, wire),
            (Kind::Int32, Value::I32(v)) => encoding::int32::encode(n, &v, wire),
            (Kind::Sint32, Value::I32(v)) => encoding::sint32::encode(n, &v, wire),
            (Kind::Sfixed32, Value::I32(v)) => encoding::sfixed32::encode(n, &v, wire),
            (Kind::Int64, Value::I64(v)) => encoding::int64::encode(n, &v, wire),
            (Kind::Sint64, Value::I64(v)) => encoding::sint64::encode(n, &v, wire),
            (Kind::Sfixed64, Value::I64(v)) => encoding::sfixed64::encode(n, &v, wire),
            (Kind::Uint32, Value::U32(v)) => encoding::uint32::encode(n, &v, wire),
            (Kind::Fixed32, Value::U32(v)) => encoding::fixed32::encode(n, &v, wire),
            (Kind::Uint64, Value::U64(v)) => encoding::uint64::encode(n, &v, wire),
            (Kind::Fixed64, Value::U64(v)) => encoding::fixed64::encode(n, &v, wire),
            (Kind::Float, Value::F32(v)) => encoding::float::encode(n, &v, wire),
            (Kind::Double, Value::F64(v)) => encoding::double::encode(n, &v, wire),
            (Kind::Enum(_), Value::EnumNumber(v)) => encoding::int32::encode(n, &v, wire),
            (Kind::Bytes, Value::Bytes(v)) => encoding::bytes::encode(n, &v, wire),
            // `scalar_value` gives each kind its own variant, so this is never reached; were it, the general way
            // would build the request rather than this guess at an encoding.
            _ => return None,
        }
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, LazyLock};

    use base64::Engine as _;
    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    use super::*;
    use crate::gateway::rules::{Route, RouteTable};
    use crate::gateway::transcode::{self, TranscodeOptions};

    static TABLE: LazyLock<RouteTable> = LazyLock::new(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut compiler =
            protox::Compiler::new([root.join("tests/protos"), root.join("proto")]).expect("the include paths exist");
        compiler.include_imports(true);
        compiler.open_file("wire/path_only.proto").expect("the path test proto compiles");
        // Through bytes, so that the `google.api.http` options are read with the pool's extensions.
        let pool = DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice())
            .expect("the path test descriptors are valid");
        RouteTable::from_pool(&pool).expect("the path test routes load")
    });

    fn route(rpc: &str) -> Arc<Route> {
        let found = TABLE.routes().iter().find(|route| route.rpc.name() == rpc);
        Arc::clone(found.unwrap_or_else(|| panic!("a route for {rpc}")))
    }

    /// The general way: a `DynamicMessage` built by `request_message`, then encoded.
    fn general(route: &Route, values: &[String], query: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
        let path = PathMatch { values: values.to_vec() };
        transcode::request_message(route, path, query, body, &TranscodeOptions::default())
            .map(|message| message.encode_to_vec())
            .map_err(|e| e.to_string())
    }

    fn path_only(route: &Route, values: &[String]) -> Result<Vec<u8>, String> {
        let plan = route.path_only.as_ref().expect("the route has a path-only plan");
        let path = PathMatch { values: values.to_vec() };
        let wire = plan.request(&path, None, b"").expect("a request without body or query is written");
        wire.map(|bytes| bytes.to_vec()).map_err(|e| e.to_string())
    }

    /// The text of a value of the field's kind, as a client would put it in a path.
    fn valid_text(name: &str) -> BoxedStrategy<String> {
        let int = |text: BoxedStrategy<String>| prop_oneof![1 => Just("0".to_string()), 4 => text].boxed();
        match name {
            "s" | "opt_s" => any::<String>().boxed(),
            "b" => prop_oneof![Just("true".to_string()), Just("false".to_string())].boxed(),
            "i32" | "si32" | "sf32" | "opt" => int(any::<i32>().prop_map(|v| v.to_string()).boxed()),
            "i64" | "si64" | "sf64" => int(any::<i64>().prop_map(|v| v.to_string()).boxed()),
            "u32" | "f32" => int(any::<u32>().prop_map(|v| v.to_string()).boxed()),
            "u64" | "f64" => int(any::<u64>().prop_map(|v| v.to_string()).boxed()),
            "fl" | "d" => prop_oneof![
                any::<f64>().prop_map(|v| v.to_string()),
                any::<f32>().prop_map(|v| v.to_string()),
                prop::sample::select(vec!["NaN", "Infinity", "-Infinity", "-0", "0", "1e3"]).prop_map(String::from),
            ]
            .boxed(),
            "shade" => prop::sample::select(vec!["SHADE_UNSPECIFIED", "LIGHT", "DARK", "0", "2", "7"])
                .prop_map(String::from)
                .boxed(),
            "raw" => prop_oneof![
                prop::collection::vec(any::<u8>(), 0..8)
                    .prop_map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes)),
                prop::collection::vec(any::<u8>(), 0..8)
                    .prop_map(|bytes| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)),
            ]
            .boxed(),
            other => panic!("no generator for {other}"),
        }
    }

    /// Path values for `route`: mostly valid for their fields, now and then anything at all.
    fn path_values(route: &Route) -> Vec<BoxedStrategy<String>> {
        route
            .path_fields
            .iter()
            .map(|binding| {
                let name = binding.path[0].name();
                prop_oneof![19 => valid_text(name), 1 => any::<String>()].boxed()
            })
            .collect()
    }

    proptest! {
        /// In field-number order, the bytes are prost-reflect's own; a value that does not parse is the same 400.
        #[test]
        fn ordered_paths_are_written_as_prost_reflect_encodes_them(values in path_values(&route("Ordered"))) {
            let route = route("Ordered");
            prop_assert_eq!(path_only(&route, &values), general(&route, &values, None, b""));
        }

        /// In any other order, the bytes decode to the message the general way builds (compared re-encoded, in
        /// field-number order, since a NaN is not equal to itself).
        #[test]
        fn reversed_paths_decode_to_the_general_message(values in path_values(&route("Reversed"))) {
            let route = route("Reversed");
            let input = route.rpc.input();
            let canonical = |wire: Vec<u8>| {
                DynamicMessage::decode(input.clone(), wire.as_slice()).expect("decodes").encode_to_vec()
            };
            let written = path_only(&route, &values).map(canonical);
            let expected = general(&route, &values, None, b"").map(canonical);
            prop_assert_eq!(written, expected);
        }
    }

    #[test]
    fn defaults_are_left_out_unless_the_field_has_presence() {
        let route = route("Ordered");
        let mut values: Vec<String> = route.path_fields.iter().map(|_| "0".to_string()).collect();
        values[0] = String::new(); // s
        values[1] = "false".into(); // b
        values[15] = String::new(); // raw
        values[17] = String::new(); // opt_s
        let wire = path_only(&route, &values).expect("all values parse");
        // opt (17) = 0 and opt_s (18) = "": written because they have presence; nothing else is.
        assert_eq!(wire, [0x88, 0x01, 0x00, 0x92, 0x01, 0x00]);
        assert_eq!(Ok(wire), general(&route, &values, None, b""));
    }

    #[test]
    fn a_value_that_does_not_parse_is_a_400_naming_the_parameter() {
        let route = route("Ordered");
        let mut values: Vec<String> = route.path_fields.iter().map(|_| "1".to_string()).collect();
        values[1] = "true".into();
        values[5] = "12x".into(); // i64
        let error = path_only(&route, &values).expect_err("12x is no integer");
        assert!(error.contains("path parameter i64") && error.contains("\"12x\""), "{error}");
        assert_eq!(Err(error), general(&route, &values, None, b""));
    }

    #[test]
    fn nested_and_message_bindings_body_and_query_go_the_general_way() {
        assert!(route("Nested").path_only.is_none(), "a nested binding ({{leaf.name}})");
        assert!(route("Stamped").path_only.is_none(), "a Timestamp parsed from its string form");
        let with_body = route("WithBody");
        let plan = with_body.path_only.as_ref().expect("a route with a body rule still has a plan");
        let path = PathMatch { values: vec!["x".into()] };
        assert!(plan.request(&path, None, b"{}").is_none(), "a body is read the general way");
        assert!(plan.request(&path, Some("s=y"), b"").is_none(), "a query string is read the general way");
        let wire = plan.request(&path, Some(""), b"").expect("an empty query string is none").expect("written");
        assert_eq!(wire.as_ref(), [0x0a, 0x01, b'x']);
    }
}
