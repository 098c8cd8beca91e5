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

use prost_reflect::{FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, RefBuilder, Schema, SchemaFormat, SchemaType, Type,
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

/// The leading comment of the definition at `path` in `file`, as the
/// `.proto` file writes it (the descriptors keep source info so that
/// reflection and this document carry the same documentation).
fn comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let text = info
        .location
        .iter()
        .find(|location| location.path == path)?
        .leading_comments
        .as_deref()?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let joined = lines.join("\n").trim().to_string();
    (!joined.is_empty()).then_some(joined)
}

/// `first` and `then` as one description, either may be absent.
fn describe(first: Option<String>, then: &str) -> Option<String> {
    match (first, then.is_empty()) {
        (Some(first), true) => Some(first),
        (Some(first), false) => Some(format!("{first}\n\n{then}")),
        (None, false) => Some(then.to_string()),
        (None, true) => None,
    }
}

/// The schema of message `desc` in the proto3 JSON mapping.
fn message_schema(desc: &MessageDescriptor) -> RefOr<Schema> {
    let mapping = format!(
        "`{}` in the proto3 JSON mapping. Fields at their default value are left out of \
         answers; of the fields of a oneof at most one is set.",
        desc.full_name()
    );
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(describe(
            comment(&desc.parent_file(), desc.path()),
            &mapping,
        ));
    for field in desc.fields() {
        object = object.property(field.name(), field_schema(&field));
    }
    object.into()
}

fn field_schema(field: &FieldDescriptor) -> RefOr<Schema> {
    let doc = comment(&field.parent_file(), field.path());
    if field.is_map() {
        let value = match field.kind() {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            other => other,
        };
        return ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(doc)
            .additional_properties(Some(kind_schema(&value, None)))
            .into();
    }
    if field.is_list() {
        ArrayBuilder::new()
            .description(doc)
            .items(kind_schema(&field.kind(), None))
            .into()
    } else {
        kind_schema(&field.kind(), doc)
    }
}

fn scalar(
    types: SchemaType,
    format: Option<SchemaFormat>,
    description: Option<String>,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(types)
        .format(format)
        .description(description)
        .into()
}

fn known(format: KnownFormat) -> Option<SchemaFormat> {
    Some(SchemaFormat::KnownFormat(format))
}

fn custom(format: &str) -> Option<SchemaFormat> {
    Some(SchemaFormat::Custom(format.to_string()))
}

/// The schema of one value of type `kind`, with `doc` (the field's
/// comment) and what the JSON mapping does to the type as its description.
fn kind_schema(kind: &Kind, doc: Option<String>) -> RefOr<Schema> {
    let wide = "A 64-bit integer: a decimal string in answers; a number or a string in requests.";
    let integer = SchemaType::new(Type::Integer);
    let number_or_string: SchemaType = [Type::String, Type::Integer].into_iter().collect();
    match kind {
        Kind::Message(m) => RefBuilder::new()
            .ref_location_from_schema_name(component_name(m))
            .description(doc)
            .into(),
        Kind::Enum(e) => ObjectBuilder::new()
            .schema_type(Type::String)
            .description(describe(
                doc,
                &format!("`{}`, by value name.", e.full_name()),
            ))
            .enum_values(Some(e.values().map(|v| v.name().to_string())))
            .into(),
        Kind::Bool => scalar(SchemaType::new(Type::Boolean), None, doc),
        Kind::String => scalar(SchemaType::new(Type::String), None, doc),
        Kind::Bytes => scalar(
            SchemaType::new(Type::String),
            known(KnownFormat::Byte),
            describe(
                doc,
                "Bytes, base64-encoded (standard or URL-safe alphabet).",
            ),
        ),
        Kind::Double => scalar(
            SchemaType::new(Type::Number),
            known(KnownFormat::Double),
            doc,
        ),
        Kind::Float => scalar(
            SchemaType::new(Type::Number),
            known(KnownFormat::Float),
            doc,
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            scalar(integer, known(KnownFormat::Int32), doc)
        }
        Kind::Uint32 | Kind::Fixed32 => scalar(integer, custom("uint32"), doc),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            scalar(number_or_string, custom("int64"), describe(doc, wide))
        }
        Kind::Uint64 | Kind::Fixed64 => {
            scalar(number_or_string, custom("uint64"), describe(doc, wide))
        }
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
        HoldJobRequest,
        HoldJobResponse,
        ReleaseJobRequest,
        ReleaseJobResponse,
        SetJobPriorityRequest,
        SetJobPriorityResponse,
        JobEvent,
        GetTaskLogsResponse,
        ListJobTasksResponse,
        TaskLogChunk,
        ListRegionsResponse,
        DrainRegionRequest,
        RegionInfo,
        ListNodesResponse,
        CordonNodeRequest,
        CordonNodeResponse,
        UncordonNodeResponse,
        DrainNodeRequest,
        DrainNodeResponse,
        CreateScheduleRequest,
        CreateScheduleResponse,
        GetScheduleResponse,
        ListSchedulesResponse,
        PauseScheduleRequest,
        PauseScheduleResponse,
        ResumeScheduleRequest,
        ResumeScheduleResponse,
        DeleteScheduleResponse,
        GetUsageResponse,
        CreateTokenRequest,
        CreateTokenResponse,
        ListTokensResponse,
        RevokeTokenResponse,
        ListAuditRecordsResponse,
    );
}

#[cfg(test)]
mod tests {
    use utoipa::ToSchema;

    use super::*;

    #[test]
    fn schemas_carry_the_comments_of_the_proto_files() {
        let Ok(desc) = descriptors::message("SubmitJobRequest") else {
            panic!("no descriptor");
        };
        let schema = serde_json::to_value(message_schema(&desc)).unwrap_or_default();
        let field = schema["properties"]["request_id"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            field.starts_with("Client-chosen idempotency key"),
            "{field}"
        );
        let message = schema["description"].as_str().unwrap_or_default();
        assert!(message.starts_with("Request of SubmitJob"), "{message}");
    }

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
