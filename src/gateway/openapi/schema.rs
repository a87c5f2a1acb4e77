//! Protobuf descriptors → JSON Schemas of their proto3 JSON form.
//!
//! [`Schemas`] hands out `$ref`s to messages and enums while the operations are built, and then describes each of
//! them, and everything their fields reach, as one component keyed by full proto name. The mapping is proto3
//! JSON's: 64-bit integers as strings, enums by value name, bytes in base64, maps as objects, repeated fields as
//! arrays, the well-known types and wrappers in their special forms, and `google.rpc.Status` as the error body
//! the gateway writes. Nothing here knows about routes or operations.

use std::collections::{BTreeMap, HashSet};

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr, Schema};

use super::comments::{comments, field_comments, join_paragraphs};

/// The error body of every failure, written by `gateway::error` rather than read from a descriptor.
pub(super) const STATUS: &str = "google.rpc.Status";

/// Collects the component schemas while operations are built: every `$ref` handed out names a message or
/// enum that [`Schemas::finish`] then describes.
#[derive(Default)]
pub(super) struct Schemas {
    /// Full names already queued or described, so each type is described once (and cycles end).
    seen: HashSet<String>,
    pending: Vec<Named>,
}

enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl Schemas {
    /// The schema of a property: messages and enums by `$ref` to their component, with the field's comments.
    pub(super) fn field_schema(&mut self, field: &FieldDescriptor) -> RefOr<Schema> {
        let description = field_comments(field);
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return ObjectBuilder::new().description(description).into();
            };
            let key = entry.map_entry_key_field();
            let value = self.value_schema(&entry.map_entry_value_field(), None);
            let keys = match key.kind() {
                Kind::String => String::new(),
                Kind::Bool => " Keys are `true` or `false`.".to_string(),
                _ => " Keys are integers in decimal.".to_string(),
            };
            let description = join_paragraphs(description, format!("A map, as a JSON object.{keys}"));
            return ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .additional_properties(Some(AdditionalProperties::RefOr(value)))
                .into();
        }
        if field.is_list() {
            return ArrayBuilder::new().items(self.value_schema(field, None)).description(description).into();
        }
        self.value_schema(field, description)
    }

    /// The schema of one value of `field` (an element, for repeated fields).
    fn value_schema(&mut self, field: &FieldDescriptor, description: Option<String>) -> RefOr<Schema> {
        match field.kind() {
            Kind::Message(message) => ref_with(self.want_message(&message), description).into(),
            Kind::Enum(enumeration) => ref_with(self.want_enum(&enumeration), description).into(),
            scalar => scalar_schema(&scalar).description(description).into(),
        }
    }

    /// A path, query or header parameter's schema. Inline rather than `$ref`, so the accepted string form is
    /// right where the parameter is: enums list their names, well-known types show their JSON string form.
    pub(super) fn parameter_schema(&mut self, field: &FieldDescriptor) -> RefOr<Schema> {
        let value: RefOr<Schema> = match field.kind() {
            // A parameter is never absent-but-null, so a wrapper is just its wrapped value.
            Kind::Message(message) if is_wrapper(message.full_name()) => match message.get_field_by_name("value") {
                Some(value) => scalar_schema(&value.kind()).build().into(),
                None => ref_with(self.want_message(&message), None).into(),
            },
            Kind::Message(message) => match well_known_schema(&message) {
                Some(schema) => schema.into(),
                // The route table only binds string-form messages to parameters; a `$ref` is still truthful.
                None => ref_with(self.want_message(&message), None).into(),
            },
            Kind::Enum(enumeration) => enum_schema(&enumeration, None).into(),
            scalar => scalar_schema(&scalar).build().into(),
        };
        if field.is_list() { ArrayBuilder::new().items(value).build().into() } else { value }
    }

    /// `message` less the fields at the end of `bound` (paths of fields from `message` down), inline; or a plain
    /// `$ref` when nothing is bound.
    pub(super) fn message_without(
        &mut self,
        message: &MessageDescriptor,
        bound: &[&[FieldDescriptor]],
        description: Option<String>,
    ) -> RefOr<Schema> {
        if bound.is_empty() {
            return ref_with(self.want_message(message), None).into();
        }
        let mut object = ObjectBuilder::new().schema_type(Type::Object).description(description);
        for field in message.fields() {
            let rests: Vec<&[FieldDescriptor]> = bound
                .iter()
                .filter_map(|path| path.split_first())
                .filter(|(first, _)| **first == field)
                .map(|(_, rest)| rest)
                .collect();
            if rests.iter().any(|rest| rest.is_empty()) {
                continue;
            }
            let schema = match field.kind() {
                Kind::Message(nested) if !rests.is_empty() => {
                    self.message_without(&nested, &rests, field_comments(&field))
                }
                _ => self.field_schema(&field),
            };
            object = object.property(field.json_name(), schema);
        }
        object.into()
    }

    pub(super) fn want_message(&mut self, message: &MessageDescriptor) -> Ref {
        if message.full_name() == STATUS {
            // A google.rpc.Status in a message has the JSON of every error body: one schema serves both.
            return self.want_status();
        }
        if self.seen.insert(message.full_name().to_string()) {
            self.pending.push(Named::Message(message.clone()));
        }
        Ref::from_schema_name(message.full_name())
    }

    fn want_enum(&mut self, enumeration: &EnumDescriptor) -> Ref {
        if self.seen.insert(enumeration.full_name().to_string()) {
            self.pending.push(Named::Enum(enumeration.clone()));
        }
        Ref::from_schema_name(enumeration.full_name())
    }

    pub(super) fn want_status(&mut self) -> Ref {
        self.seen.insert(STATUS.to_string());
        Ref::from_schema_name(STATUS)
    }

    /// Describes every type handed out as a `$ref`, including those its fields reach.
    pub(super) fn finish(mut self) -> BTreeMap<String, Schema> {
        let mut schemas = BTreeMap::new();
        if self.seen.contains(STATUS) {
            schemas.insert(STATUS.to_string(), status_schema());
        }
        while let Some(named) = self.pending.pop() {
            let (name, schema) = match named {
                Named::Enum(enumeration) => {
                    let description = comments(&enumeration.parent_file(), enumeration.path());
                    (enumeration.full_name().to_string(), enum_schema(&enumeration, description))
                }
                Named::Message(message) => (message.full_name().to_string(), self.message_schema(&message)),
            };
            schemas.insert(name, schema);
        }
        schemas
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Schema {
        if let Some(schema) = well_known_schema(message) {
            // Struct and ListValue hold Values: make sure that component exists too.
            if matches!(message.full_name(), "google.protobuf.Struct" | "google.protobuf.ListValue")
                && let Some(value) = message.parent_pool().get_message_by_name("google.protobuf.Value")
            {
                self.want_message(&value);
            }
            return schema;
        }
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(comments(&message.parent_file(), message.path()));
        for field in message.fields() {
            object = object.property(field.json_name(), self.field_schema(&field));
        }
        object.build().into()
    }
}

/// The body `gateway::error::status_json` writes: always all three members.
fn status_schema() -> Schema {
    let detail = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "One typed detail: `@type` names its message (such as \
             `type.googleapis.com/google.rpc.BadRequest`) and the other members are that message's JSON fields; \
             a type the gateway does not know comes as `value`, the message in base64.",
        ))
        .property(
            "@type",
            ObjectBuilder::new().schema_type(Type::String).description(Some("The type URL of the detail.")),
        )
        .required("@type")
        .additional_properties(Some(AdditionalProperties::FreeForm(true)));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "The error model of gRPC and Google APIs, the body of every error response (and of the `error` event \
             or line that ends a failed stream).",
        ))
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                .description(Some("The gRPC status code, a value of google.rpc.Code (such as 5 for NOT_FOUND).")),
        )
        .property(
            "message",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("A developer-facing error message in English.")),
        )
        .property(
            "details",
            ArrayBuilder::new()
                .items(detail)
                .description(Some("Typed error details, such as google.rpc.BadRequest field violations.")),
        )
        .required("code")
        .required("message")
        .required("details")
        .build()
        .into()
}

/// Proto3 JSON types of the scalar kinds. 64-bit integers are strings, because JSON numbers lose precision
/// beyond 2^53 in most clients.
fn scalar_schema(kind: &Kind) -> ObjectBuilder {
    let (schema_type, format) = match kind {
        Kind::Double => (Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
        Kind::Float => (Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Float))),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            (Type::Integer, Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        }
        Kind::Uint32 | Kind::Fixed32 => (Type::Integer, Some(SchemaFormat::Custom("uint32".into()))),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            (Type::String, Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        }
        Kind::Uint64 | Kind::Fixed64 => (Type::String, Some(SchemaFormat::Custom("uint64".into()))),
        Kind::Bool => (Type::Boolean, None),
        Kind::String => (Type::String, None),
        Kind::Bytes => return ObjectBuilder::new().schema_type(Type::String).content_encoding("base64"),
        // Not scalars; callers handle them before asking. An unconstrained schema is the safe answer.
        Kind::Message(_) | Kind::Enum(_) => return ObjectBuilder::new().schema_type(SchemaType::AnyValue),
    };
    ObjectBuilder::new().schema_type(schema_type).format(format)
}

/// An enum by value names, with each value's comment in the description; or by number, which the proto3 JSON
/// mapping accepts in requests and uses in responses for a value the descriptors do not name (a newer
/// server's). `google.protobuf.NullValue` is JSON `null`.
fn enum_schema(enumeration: &EnumDescriptor, description: Option<String>) -> Schema {
    if enumeration.full_name() == "google.protobuf.NullValue" {
        return ObjectBuilder::new().schema_type(Type::Null).description(Some("JSON `null`.")).build().into();
    }
    let names: Vec<String> = enumeration.values().map(|value| value.name().to_string()).collect();
    let values = enumeration
        .values()
        .map(|value| match comments(&value.parent_file(), value.path()) {
            Some(text) => format!("- `{}`: {}", value.name(), text.replace('\n', " ")),
            None => format!("- `{}`", value.name()),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let description = join_paragraphs(
        description,
        format!(
            "Sent by name; requests may also use the number, and a value unknown to the gateway comes as its number.\n\n{values}"
        ),
    );
    let by_name = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names));
    let by_number =
        ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)));
    AnyOfBuilder::new().item(by_name).item(by_number).description(Some(description)).build().into()
}

fn is_wrapper(full_name: &str) -> bool {
    matches!(
        full_name,
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// The proto3 JSON forms of the well-known types whose JSON is not an object of their fields.
fn well_known_schema(message: &MessageDescriptor) -> Option<Schema> {
    let string = |format: Option<SchemaFormat>, description: &str| {
        ObjectBuilder::new().schema_type(Type::String).format(format).description(Some(description)).build().into()
    };
    // Wrappers are how proto3 tells "unset" from the default value, so `null` is part of their JSON.
    let wrapper = |json_type: Type, format: Option<SchemaFormat>, description: &str| -> Schema {
        ObjectBuilder::new()
            .schema_type([json_type, Type::Null].into_iter().collect::<SchemaType>())
            .format(format)
            .description(Some(description))
            .build()
            .into()
    };
    let schema = match message.full_name() {
        "google.protobuf.Timestamp" => string(
            Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)),
            "A point in time, as an RFC 3339 string in UTC with up to 9 fractional digits, such as \
             `2024-05-01T12:30:00.5Z`.",
        ),
        "google.protobuf.Duration" => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^-?[0-9]+(\\.[0-9]{1,9})?s$"))
            .description(Some(
                "A span of time, as seconds with up to 9 fractional digits and an `s` suffix, such as `1.5s`.",
            ))
            .build()
            .into(),
        "google.protobuf.FieldMask" => {
            string(None, "A set of field paths, comma-separated, in lowerCamelCase, such as `name,email`.")
        }
        "google.protobuf.DoubleValue" => {
            wrapper(Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Double)), "A double, or null when unset.")
        }
        "google.protobuf.FloatValue" => {
            wrapper(Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Float)), "A float, or null when unset.")
        }
        "google.protobuf.Int64Value" => wrapper(
            Type::String,
            Some(SchemaFormat::KnownFormat(KnownFormat::Int64)),
            "A 64-bit integer as a decimal string, or null when unset.",
        ),
        "google.protobuf.UInt64Value" => wrapper(
            Type::String,
            Some(SchemaFormat::Custom("uint64".into())),
            "An unsigned 64-bit integer as a decimal string, or null when unset.",
        ),
        "google.protobuf.Int32Value" => wrapper(
            Type::Integer,
            Some(SchemaFormat::KnownFormat(KnownFormat::Int32)),
            "A 32-bit integer, or null when unset.",
        ),
        "google.protobuf.UInt32Value" => wrapper(
            Type::Integer,
            Some(SchemaFormat::Custom("uint32".into())),
            "An unsigned 32-bit integer, or null when unset.",
        ),
        "google.protobuf.BoolValue" => wrapper(Type::Boolean, None, "A boolean, or null when unset."),
        "google.protobuf.StringValue" => wrapper(Type::String, None, "A string, or null when unset."),
        "google.protobuf.BytesValue" => ObjectBuilder::new()
            .schema_type([Type::String, Type::Null].into_iter().collect::<SchemaType>())
            .content_encoding("base64")
            .description(Some("Bytes in base64, or null when unset."))
            .build()
            .into(),
        "google.protobuf.Struct" => ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Any JSON object."))
            .additional_properties(Some(Ref::from_schema_name("google.protobuf.Value")))
            .build()
            .into(),
        "google.protobuf.Value" => {
            ObjectBuilder::new().schema_type(SchemaType::AnyValue).description(Some("Any JSON value.")).build().into()
        }
        "google.protobuf.ListValue" => ArrayBuilder::new()
            .items(Ref::from_schema_name("google.protobuf.Value"))
            .description(Some("Any JSON array."))
            .build()
            .into(),
        "google.protobuf.Empty" => ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An empty JSON object, `{}`."))
            .build()
            .into(),
        "google.protobuf.Any" => ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A message of any type: `@type` is its type URL and the other members are its JSON fields (or \
                 `value`, for types whose JSON is not an object).",
            ))
            .property(
                "@type",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The type URL, such as `type.googleapis.com/google.rpc.BadRequest`.")),
            )
            .required("@type")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .build()
            .into(),
        _ => return None,
    };
    Some(schema)
}

pub(super) fn ref_with(reference: Ref, description: Option<String>) -> Ref {
    let mut reference = reference;
    reference.description = description.unwrap_or_default();
    reference
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::gateway::openapi::fixtures::{bare, library_pool};
    use crate::proto::DESCRIPTOR_POOL;

    fn field_schema_of(pool: &DescriptorPool, message: &str, name: &str) -> Json {
        let field = pool
            .get_message_by_name(message)
            .and_then(|message| message.get_field_by_name(name))
            .unwrap_or_else(|| panic!("{message}.{name} is in the pool"));
        bare(serde_json::to_value(Schemas::default().field_schema(&field)).expect("schemas serialise"))
    }

    #[test]
    fn field_kinds_map_to_their_proto3_json_schemas() {
        let library = library_pool();
        let table = [
            ("user.User", "id", json!({"type": "string", "format": "int64"})),
            ("user.User", "name", json!({"type": "string"})),
            ("user.User", "roles", json!({"type": "array", "items": {"type": "string"}})),
            ("user.User", "status", json!({"$ref": "#/components/schemas/user.UserStatus"})),
            ("user.User", "created_at", json!({"$ref": "#/components/schemas/google.protobuf.Timestamp"})),
            ("user.ListUsersRequest", "page_size", json!({"type": "integer", "format": "int32"})),
            (
                "user.ListUsersResponse",
                "users",
                json!({"type": "array", "items": {"$ref": "#/components/schemas/user.User"}}),
            ),
            (
                "user.UpdateUserRequest",
                "update_mask",
                json!({"$ref": "#/components/schemas/google.protobuf.FieldMask"}),
            ),
            (
                "google.protobuf.UninterpretedOption",
                "positive_int_value",
                json!({"type": "string", "format": "uint64"}),
            ),
            ("google.protobuf.UninterpretedOption", "double_value", json!({"type": "number", "format": "double"})),
            (
                "google.protobuf.UninterpretedOption",
                "string_value",
                json!({"type": "string", "contentEncoding": "base64"}),
            ),
            ("google.protobuf.FieldDescriptorProto", "proto3_optional", json!({"type": "boolean"})),
            ("google.protobuf.Timestamp", "nanos", json!({"type": "integer", "format": "int32"})),
            (
                "google.rpc.Status",
                "details",
                json!({"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}}),
            ),
            ("shelf.Book", "page_count", json!({"type": "integer", "format": "int32"})),
            ("shelf.Book", "isbn", json!({"type": "string", "format": "uint64"})),
            ("shelf.Book", "balance", json!({"type": "string", "format": "int64"})),
            ("shelf.Book", "offset", json!({"type": "string", "format": "int64"})),
            ("shelf.Book", "edition", json!({"type": "integer", "format": "uint32"})),
            ("shelf.Book", "shelf_slot", json!({"type": "integer", "format": "int32"})),
            ("shelf.Book", "price", json!({"type": "number", "format": "float"})),
            ("shelf.Book", "weight_grams", json!({"type": "integer", "format": "uint32"})),
            ("shelf.Book", "signed", json!({"type": "boolean"})),
            ("shelf.Book", "cover", json!({"type": "string", "contentEncoding": "base64"})),
            (
                "shelf.Book",
                "sales",
                json!({"type": "object", "additionalProperties": {"type": "string", "format": "int64"}}),
            ),
            ("shelf.Book", "related", json!({"type": "array", "items": {"$ref": "#/components/schemas/shelf.Book"}})),
            ("shelf.Book", "rating", json!({"$ref": "#/components/schemas/google.protobuf.DoubleValue"})),
            (
                "google.protobuf.Struct",
                "fields",
                json!({
                    "type": "object",
                    "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"},
                }),
            ),
        ];
        for (message, name, expected) in table {
            let pool = if message.starts_with("shelf.") || message == "google.protobuf.Struct" {
                &library
            } else {
                &DESCRIPTOR_POOL
            };
            assert_eq!(field_schema_of(pool, message, name), expected, "{message}.{name}");
        }
    }

    #[test]
    fn well_known_types_have_their_json_forms() {
        let pool = library_pool();
        let table = [
            ("google.protobuf.Timestamp", json!({"type": "string", "format": "date-time"})),
            ("google.protobuf.Duration", json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})),
            ("google.protobuf.FieldMask", json!({"type": "string"})),
            ("google.protobuf.DoubleValue", json!({"type": ["number", "null"], "format": "double"})),
            ("google.protobuf.FloatValue", json!({"type": ["number", "null"], "format": "float"})),
            ("google.protobuf.Int64Value", json!({"type": ["string", "null"], "format": "int64"})),
            ("google.protobuf.UInt64Value", json!({"type": ["string", "null"], "format": "uint64"})),
            ("google.protobuf.Int32Value", json!({"type": ["integer", "null"], "format": "int32"})),
            ("google.protobuf.UInt32Value", json!({"type": ["integer", "null"], "format": "uint32"})),
            ("google.protobuf.BoolValue", json!({"type": ["boolean", "null"]})),
            ("google.protobuf.StringValue", json!({"type": ["string", "null"]})),
            ("google.protobuf.BytesValue", json!({"type": ["string", "null"], "contentEncoding": "base64"})),
            (
                "google.protobuf.Struct",
                json!({
                    "type": "object",
                    "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"},
                }),
            ),
            ("google.protobuf.Value", json!({})),
            (
                "google.protobuf.ListValue",
                json!({"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Value"}}),
            ),
            ("google.protobuf.Empty", json!({"type": "object"})),
            (
                "google.protobuf.Any",
                json!({
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "required": ["@type"],
                    "additionalProperties": true,
                }),
            ),
        ];
        for (name, expected) in table {
            let message = pool.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the pool"));
            let schema = serde_json::to_value(Schemas::default().message_schema(&message)).expect("schemas serialise");
            assert_eq!(bare(schema), expected, "{name}");
        }
        let null = pool.get_enum_by_name("google.protobuf.NullValue").expect("NullValue");
        assert_eq!(bare(serde_json::to_value(enum_schema(&null, None)).expect("serialises")), json!({"type": "null"}));
    }

    #[test]
    fn enums_list_their_names_and_comment_each_value() {
        let status = DESCRIPTOR_POOL.get_enum_by_name("user.UserStatus").expect("user.UserStatus");
        let schema = serde_json::to_value(enum_schema(&status, comments(&status.parent_file(), status.path())))
            .expect("serialises");
        assert_eq!(schema["anyOf"][0]["type"], "string");
        assert_eq!(
            schema["anyOf"][0]["enum"],
            json!(["USER_STATUS_UNSPECIFIED", "USER_STATUS_ACTIVE", "USER_STATUS_INACTIVE", "USER_STATUS_SUSPENDED"])
        );
        assert_eq!(schema["anyOf"][1], json!({"type": "integer", "format": "int32"}), "or by number");
        let description = schema["description"].as_str().expect("a description");
        assert!(description.starts_with("The status of a user account.\n\n"), "{description}");
        assert!(
            description.contains("\n- `USER_STATUS_ACTIVE`: The account is in use. New users start here."),
            "{description}"
        );
    }
}
