//! The OpenAPI 3 description of the HTTP API, generated from the code.
//!
//! Owns the document's frame (title, version, tags) and the JSON schemas of
//! request and response bodies. Those bodies are protobuf messages in the
//! proto3 JSON mapping (`crate::json`), so their schemas are generated here
//! from the embedded descriptors, one component per message, rather than
//! written by hand: a field added to a `.proto` file appears in the document
//! with no edit. The operations themselves are declared on the handlers
//! (`crate::http`), next to the routes, so the route table is written once.
//! It must never describe a route or a field that the code does not have.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, Ref, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder, RefOr};

use crate::descriptors;

/// The document's frame: everything but the paths and their schemas, which
/// the router adds as it registers each route.
pub fn frame() -> OpenApi {
    let info = InfoBuilder::new()
        .title("Meridian federation API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The HTTP/JSON face of the `meridian.v1.Federation` gRPC service: every \
             route calls the same code as its RPC. Bodies are the RPC's protobuf messages \
             in the proto3 JSON mapping (proto field names in answers; proto or \
             lowerCamelCase names accepted in requests; 64-bit integers as strings; bytes \
             as base64). Every error answer has the body `{code, message, field}`. See \
             docs/api.md.",
        ))
        .build();
    OpenApiBuilder::new().info(info).build()
}

/// Name of the schema component of message `desc`: its name within the
/// package (`JobSpec`, or `Outer.Inner` for a nested message).
fn component_name(desc: &MessageDescriptor) -> String {
    let full = desc.full_name();
    full.strip_prefix(descriptors::PACKAGE)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(full)
        .to_string()
}

/// The schema of message `desc` in the proto3 JSON mapping.
fn message_schema(desc: &MessageDescriptor) -> RefOr<Schema> {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!(
            "`{}` in the proto3 JSON mapping. Fields at their default value are left \
             out of answers; of the fields of a oneof at most one is set.",
            desc.full_name()
        )));
    for field in desc.fields() {
        object = object.property(field.name(), field_schema(&field));
    }
    object.into()
}

fn field_schema(field: &FieldDescriptor) -> RefOr<Schema> {
    if field.is_map() {
        let value = match field.kind() {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            other => other,
        };
        return ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(kind_schema(&value)))
            .into();
    }
    let one = kind_schema(&field.kind());
    if field.is_list() {
        ArrayBuilder::new().items(one).into()
    } else {
        one
    }
}

fn scalar(types: SchemaType, format: Option<SchemaFormat>, description: &str) -> RefOr<Schema> {
    let mut object = ObjectBuilder::new().schema_type(types).format(format);
    if !description.is_empty() {
        object = object.description(Some(description));
    }
    object.into()
}

fn custom(format: &str) -> Option<SchemaFormat> {
    Some(SchemaFormat::Custom(format.to_string()))
}

fn kind_schema(kind: &Kind) -> RefOr<Schema> {
    let wide = "a 64-bit integer: a decimal string in answers; a number or a string in requests";
    let integer = SchemaType::new(Type::Integer);
    let number_or_string: SchemaType = [Type::String, Type::Integer].into_iter().collect();
    match kind {
        Kind::Message(m) => Ref::from_schema_name(component_name(m)).into(),
        Kind::Enum(e) => ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!("`{}`, by value name", e.full_name())))
            .enum_values(Some(e.values().map(|v| v.name().to_string())))
            .into(),
        Kind::Bool => scalar(SchemaType::new(Type::Boolean), None, ""),
        Kind::String => scalar(SchemaType::new(Type::String), None, ""),
        Kind::Bytes => scalar(
            SchemaType::new(Type::String),
            Some(SchemaFormat::KnownFormat(KnownFormat::Byte)),
            "bytes, base64-encoded (standard or URL-safe alphabet)",
        ),
        Kind::Double => scalar(
            SchemaType::new(Type::Number),
            Some(SchemaFormat::KnownFormat(KnownFormat::Double)),
            "",
        ),
        Kind::Float => scalar(
            SchemaType::new(Type::Number),
            Some(SchemaFormat::KnownFormat(KnownFormat::Float)),
            "",
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => scalar(
            integer,
            Some(SchemaFormat::KnownFormat(KnownFormat::Int32)),
            "",
        ),
        Kind::Uint32 | Kind::Fixed32 => scalar(integer, custom("uint32"), ""),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            scalar(number_or_string, custom("int64"), wide)
        }
        Kind::Uint64 | Kind::Fixed64 => scalar(number_or_string, custom("uint64"), wide),
    }
}

/// The component schemas of message `name` and of every message it
/// reaches, each once.
fn closure(name: &str) -> Vec<(String, RefOr<Schema>)> {
    let Ok(root) = descriptors::message(name) else {
        return Vec::new();
    };
    let mut found = BTreeMap::new();
    let mut queue = VecDeque::from([root]);
    while let Some(desc) = queue.pop_front() {
        let key = component_name(&desc);
        if found.contains_key(&key) {
            continue;
        }
        for field in desc.fields() {
            let kind = match field.kind() {
                Kind::Message(entry) if field.is_map() => entry.map_entry_value_field().kind(),
                other => other,
            };
            if let Kind::Message(m) = kind {
                queue.push_back(m);
            }
        }
        found.insert(key, message_schema(&desc));
    }
    found.into_iter().collect()
}

/// The schema of a message whose descriptor is missing: never expected
/// (the descriptors are compiled in), but the document stays valid.
fn unknown(name: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!("`meridian.v1.{name}`")))
        .into()
}

/// Declares, for each named `meridian.v1` message, a type whose OpenAPI
/// schema is generated from that message's descriptor, for use in the
/// handlers' `#[utoipa::path]` bodies.
macro_rules! proto_schemas {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("The JSON of `meridian.v1.", stringify!($name), "`.")]
            pub struct $name;

            impl utoipa::PartialSchema for $name {
                fn schema() -> RefOr<Schema> {
                    descriptors::message(stringify!($name))
                        .map(|d| message_schema(&d))
                        .unwrap_or_else(|_| unknown(stringify!($name)))
                }
            }

            impl utoipa::ToSchema for $name {
                fn name() -> Cow<'static, str> {
                    Cow::Borrowed(stringify!($name))
                }

                fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                    schemas.extend(closure(stringify!($name)));
                }
            }
        )*
    };
}

/// Schemas of the protobuf messages the HTTP API reads and writes.
pub mod proto {
    use super::*;

    proto_schemas!(
        SubmitJobRequest,
        SubmitJobResponse,
        SubmitJobsRequest,
        SubmitJobsResponse,
        ListJobsRequest,
        ListJobsResponse,
        Job,
        CancelJobRequest,
        CancelJobResponse,
        JobEvent,
        GetTaskLogsResponse,
        ListRegionsResponse,
        DrainRegionRequest,
        RegionInfo,
        ListNodesResponse,
        CordonNodeRequest,
        CordonNodeResponse,
        UncordonNodeResponse,
        DrainNodeRequest,
        DrainNodeResponse,
    );
}

#[cfg(test)]
mod tests {
    use utoipa::ToSchema;

    use super::*;

    #[test]
    fn a_message_schema_brings_every_message_it_reaches() {
        let mut schemas = Vec::new();
        proto::SubmitJobRequest::schemas(&mut schemas);
        let names: Vec<&str> = schemas.iter().map(|(n, _)| n.as_str()).collect();
        for expected in [
            "SubmitJobRequest",
            "JobSpec",
            "Resources",
            "LabelRequirement",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
    }
}
