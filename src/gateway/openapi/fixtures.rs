//! Test fixtures shared by the unit tests of the `openapi` modules: a descriptor pool with a made-up `shelf`
//! package that exercises what the crate's own protos do not, its document, and a helper that strips
//! descriptions so schema tables compare types only.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value as Json, json};

use super::document;
use crate::gateway::rules::RouteTable;
use crate::proto::DESCRIPTOR_POOL;

/// A FieldDescriptorProto in proto3 JSON: a singular scalar.
fn field(name: &str, number: u32, kind: &str) -> Json {
    json!({"name": name, "number": number, "label": "LABEL_OPTIONAL", "type": kind})
}

/// A singular message or enum field.
fn of(name: &str, number: u32, kind: &str, type_name: &str) -> Json {
    let mut field = field(name, number, kind);
    field["typeName"] = json!(type_name);
    field
}

/// A repeated message or enum field (or a map, with its entry type).
fn repeated(name: &str, number: u32, kind: &str, type_name: &str) -> Json {
    let mut field = of(name, number, kind, type_name);
    field["label"] = json!("LABEL_REPEATED");
    field
}

/// `field` as a member of its message's first oneof.
fn in_oneof(mut field: Json) -> Json {
    field["oneofIndex"] = json!(0);
    field
}

/// The crate's descriptors plus a made-up `shelf` package: two services, the scalar kinds the crate's
/// protos lack, a map, a oneof, a cycle, nested path variables, a multi-segment variable, a wildcard, an
/// additional binding, `body: "*"` with a path-bound field, and minimal stand-ins for the well-known types
/// the crate's protos do not import.
pub(super) fn library_pool() -> DescriptorPool {
    let wrappers = [
        ("DoubleValue", "TYPE_DOUBLE"),
        ("FloatValue", "TYPE_FLOAT"),
        ("Int64Value", "TYPE_INT64"),
        ("UInt64Value", "TYPE_UINT64"),
        ("Int32Value", "TYPE_INT32"),
        ("UInt32Value", "TYPE_UINT32"),
        ("BoolValue", "TYPE_BOOL"),
        ("StringValue", "TYPE_STRING"),
        ("BytesValue", "TYPE_BYTES"),
    ];
    let wrappers = json!({
        "name": "google/protobuf/wrappers.proto",
        "package": "google.protobuf",
        "syntax": "proto3",
        "messageType": wrappers
            .iter()
            .map(|(name, kind)| json!({"name": name, "field": [field("value", 1, kind)]}))
            .collect::<Vec<_>>(),
    });
    let structs = json!({
        "name": "google/protobuf/struct.proto",
        "package": "google.protobuf",
        "syntax": "proto3",
        "messageType": [
            {
                "name": "Struct",
                "field": [repeated("fields", 1, "TYPE_MESSAGE", ".google.protobuf.Struct.FieldsEntry")],
                "nestedType": [{
                    "name": "FieldsEntry",
                    "field": [
                        field("key", 1, "TYPE_STRING"),
                        of("value", 2, "TYPE_MESSAGE", ".google.protobuf.Value"),
                    ],
                    "options": {"mapEntry": true},
                }],
            },
            {
                "name": "Value",
                "field": [
                    in_oneof(of("null_value", 1, "TYPE_ENUM", ".google.protobuf.NullValue")),
                    in_oneof(field("number_value", 2, "TYPE_DOUBLE")),
                    in_oneof(field("string_value", 3, "TYPE_STRING")),
                    in_oneof(field("bool_value", 4, "TYPE_BOOL")),
                    in_oneof(of("struct_value", 5, "TYPE_MESSAGE", ".google.protobuf.Struct")),
                    in_oneof(of("list_value", 6, "TYPE_MESSAGE", ".google.protobuf.ListValue")),
                ],
                "oneofDecl": [{"name": "kind"}],
            },
            {
                "name": "ListValue",
                "field": [repeated("values", 1, "TYPE_MESSAGE", ".google.protobuf.Value")],
            },
        ],
        "enumType": [{"name": "NullValue", "value": [{"name": "NULL_VALUE", "number": 0}]}],
    });
    let http = |rule: Json| json!({"[google.api.http]": rule});
    let library = json!({
        "name": "shelf/library.proto",
        "package": "shelf",
        "syntax": "proto3",
        "dependency": [
            "google/api/annotations.proto",
            "google/protobuf/empty.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/wrappers.proto",
            "google/rpc/status.proto",
        ],
        "messageType": [
            {
                "name": "Book",
                "field": [
                    field("name", 1, "TYPE_STRING"),
                    field("page_count", 2, "TYPE_SINT32"),
                    field("isbn", 3, "TYPE_FIXED64"),
                    field("price", 4, "TYPE_FLOAT"),
                    field("cover", 5, "TYPE_BYTES"),
                    repeated("sales", 6, "TYPE_MESSAGE", ".shelf.Book.SalesEntry"),
                    repeated("related", 7, "TYPE_MESSAGE", ".shelf.Book"),
                    of("genre", 8, "TYPE_ENUM", ".shelf.Genre"),
                    in_oneof(field("isbn10", 9, "TYPE_STRING")),
                    in_oneof(field("isbn13", 10, "TYPE_STRING")),
                    of("published", 11, "TYPE_MESSAGE", ".google.protobuf.Timestamp"),
                    of("reading_time", 12, "TYPE_MESSAGE", ".google.protobuf.Duration"),
                    of("extra", 13, "TYPE_MESSAGE", ".google.protobuf.Struct"),
                    of("rating", 14, "TYPE_MESSAGE", ".google.protobuf.DoubleValue"),
                    field("weight_grams", 15, "TYPE_UINT32"),
                    field("signed", 16, "TYPE_BOOL"),
                    field("balance", 17, "TYPE_SFIXED64"),
                    field("edition", 18, "TYPE_FIXED32"),
                    field("offset", 19, "TYPE_SINT64"),
                    field("shelf_slot", 20, "TYPE_SFIXED32"),
                    of("problem", 21, "TYPE_MESSAGE", ".google.rpc.Status"),
                ],
                "nestedType": [{
                    "name": "SalesEntry",
                    "field": [field("key", 1, "TYPE_UINT32"), field("value", 2, "TYPE_INT64")],
                    "options": {"mapEntry": true},
                }],
                "oneofDecl": [{"name": "identifier"}],
            },
            {"name": "ShelfRef", "field": [field("id", 1, "TYPE_INT64"), field("owner", 2, "TYPE_STRING")]},
            {
                "name": "GetBookRequest",
                "field": [
                    of("shelf", 1, "TYPE_MESSAGE", ".shelf.ShelfRef"),
                    field("book_id", 2, "TYPE_UINT64"),
                    repeated("genres", 3, "TYPE_ENUM", ".shelf.Genre"),
                    of("read_mask", 4, "TYPE_MESSAGE", ".google.protobuf.FieldMask"),
                    of("min_rating", 5, "TYPE_MESSAGE", ".google.protobuf.DoubleValue"),
                ],
            },
            {
                "name": "MoveBookRequest",
                "field": [
                    of("shelf", 1, "TYPE_MESSAGE", ".shelf.ShelfRef"),
                    of("book", 2, "TYPE_MESSAGE", ".shelf.Book"),
                    field("note", 3, "TYPE_STRING"),
                ],
            },
        ],
        "enumType": [{
            "name": "Genre",
            "value": [{"name": "GENRE_UNSPECIFIED", "number": 0}, {"name": "GENRE_FICTION", "number": 1}],
        }],
        "service": [
            {
                "name": "Library",
                "method": [
                    {
                        "name": "GetBook",
                        "inputType": ".shelf.GetBookRequest",
                        "outputType": ".shelf.Book",
                        "options": http(json!({
                            "get": "/v2/shelves/{shelf.id}/books/{book_id}",
                            "additionalBindings": [{"get": "/v2/books/{book_id}/**"}],
                        })),
                    },
                    {
                        "name": "MoveBook",
                        "inputType": ".shelf.MoveBookRequest",
                        "outputType": ".google.protobuf.Empty",
                        "options": http(json!({"post": "/v2/shelves/{shelf.id}/books:move", "body": "*"})),
                    },
                    {
                        "name": "ReadBooks",
                        "inputType": ".shelf.GetBookRequest",
                        "outputType": ".shelf.Book",
                        "serverStreaming": true,
                        "options": http(json!({"get": "/v2/shelves/{shelf.id}/books:read"})),
                    },
                ],
            },
            {
                "name": "Archive",
                "method": [{
                    "name": "GetBook",
                    "inputType": ".shelf.GetBookRequest",
                    "outputType": ".shelf.Book",
                    "options": http(json!({"get": "/v2/archive/{shelf.owner=users/*}/{book_id}"})),
                }],
            },
        ],
        "sourceCodeInfo": {"location": [
            {"path": [4, 0], "leadingComments": " A book on a shelf.\n"},
            {"path": [4, 0, 2, 1], "leadingComments": " Number of pages.\n"},
            {"path": [6, 0, 2, 0], "leadingComments": " Gets a book. Or fails.\n\n More text.\n"},
            {"path": [5, 0, 2, 1], "trailingComments": " Stories.\n"},
        ]},
    });
    let file_proto = DESCRIPTOR_POOL
        .get_message_by_name("google.protobuf.FileDescriptorProto")
        .expect("descriptor.proto in the pool");
    let mut pool = DESCRIPTOR_POOL.clone();
    for file in [wrappers, structs, library] {
        let message = DynamicMessage::deserialize(file_proto.clone(), file).expect("a valid FileDescriptorProto");
        pool.decode_file_descriptor_proto(message.encode_to_vec().as_slice()).expect("the file fits the pool");
    }
    pool
}

/// The document of [`library_pool`]'s routes, as JSON.
pub(super) fn library_document() -> Json {
    let routes = RouteTable::from_pool(&library_pool()).expect("the library's routes");
    serde_json::to_value(document(&routes)).expect("the document serialises")
}

/// `value` without any `description`, recursively: the tables check types, the comment tests descriptions.
pub(super) fn bare(mut value: Json) -> Json {
    fn strip(value: &mut Json) {
        match value {
            Json::Object(object) => {
                object.remove("description");
                object.values_mut().for_each(strip);
            }
            Json::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}
