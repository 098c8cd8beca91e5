//! Turns undecodable requests into INVALID_ARGUMENT naming the field.
//!
//! tonic answers a request that fails to decode (for example a string field
//! holding bad UTF-8) with INTERNAL; the Meridian convention is
//! INVALID_ARGUMENT with the field's proto path. This module owns that
//! rewrite, applied to every gRPC response as a tower layer, and turning
//! prost's error frames into paths of proto fields as the `.proto` files
//! write them. It must never touch any other response.
//!
//! prost names a oneof member by the oneof (`TaskTemplate.kind`), which is no
//! field a client can set; the member is recovered from the message type of
//! the next frame (`Command.program` means `command`), using the oneofs of
//! the embedded descriptor set so every oneof of the API is covered.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, Kind};
use tonic::{Code, Status};

const PREFIX: &str = "failed to decode Protobuf message: ";

/// Oneof members by (containing message, oneof name, member message type),
/// all by their short names as prost's error frames give them.
type Oneofs = HashMap<(String, String, String), String>;

static ONEOFS: OnceLock<Oneofs> = OnceLock::new();

fn oneofs() -> &'static Oneofs {
    ONEOFS.get_or_init(|| {
        let mut members = Oneofs::new();
        // Without the descriptors a member is left out of the path (it ends
        // at the message holding the oneof) rather than named wrongly.
        let Ok(pool) = DescriptorPool::decode(meridian_proto::FILE_DESCRIPTOR_SET) else {
            tracing::warn!("embedded descriptor set does not decode");
            return members;
        };
        for message in pool.all_messages() {
            for oneof in message.oneofs() {
                let mut seen = HashMap::<String, usize>::new();
                let fields: Vec<_> = oneof.fields().collect();
                for field in &fields {
                    if let Kind::Message(m) = field.kind() {
                        *seen.entry(m.name().to_string()).or_default() += 1;
                    }
                }
                for field in fields {
                    // Two members of one type cannot be told apart by it.
                    if let Kind::Message(m) = field.kind()
                        && seen.get(m.name()) == Some(&1)
                    {
                        members.insert(
                            (
                                message.name().to_string(),
                                oneof.name().to_string(),
                                m.name().to_string(),
                            ),
                            field.name().to_string(),
                        );
                    }
                }
            }
        }
        members
    })
}

fn is_oneof(message: &str, name: &str) -> bool {
    oneofs().keys().any(|(m, o, _)| m == message && o == name)
}

/// The proto path of the field a prost decode error names, outermost first
/// (`spec.name`, `spec.task.command.program`), and the cause.
pub fn field_of(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix(PREFIX)?;
    let mut fields = Vec::new();
    let mut cause = rest;
    // prost lists `Message.field: ` frames innermost first.
    while let Some((frame, after)) = cause.split_once(": ") {
        match frame.split_once('.') {
            Some((msg, field))
                if !msg.is_empty()
                    && msg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !field.is_empty()
                    && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                fields.push((msg, field));
                cause = after;
            }
            _ => break,
        }
    }
    fields.reverse();
    let mut names = Vec::with_capacity(fields.len());
    for (i, (msg, field)) in fields.iter().enumerate() {
        if !is_oneof(msg, field) {
            names.push(field.to_string());
            continue;
        }
        let inner = fields.get(i + 1).map(|(m, _)| m.to_string());
        match inner.and_then(|m| oneofs().get(&(msg.to_string(), field.to_string(), m))) {
            Some(member) => names.push(member.clone()),
            // The member itself did not decode (a bad length, a scalar
            // member): the path ends at the message holding the oneof.
            None => break,
        }
    }
    let fields = names;
    let path = if fields.is_empty() {
        "request".to_string()
    } else {
        fields.join(".")
    };
    Some((path, cause.to_string()))
}

/// Rewrites a decode failure response into INVALID_ARGUMENT.
pub fn rewrite<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::Internal {
        return response;
    }
    let Some((field, cause)) = field_of(status.message()) else {
        return response;
    };
    let fixed = Status::invalid_argument(format!("{field}: {cause}"));
    if fixed.add_header(response.headers_mut()).is_err() {
        tracing::warn!("could not rewrite a decode error status");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_decode_error_names_the_outermost_path_first() {
        let msg = "failed to decode Protobuf message: JobSpec.name: SubmitJobRequest.spec: invalid string value: data is not UTF-8 encoded";
        let (field, cause) = field_of(msg).unwrap();
        assert_eq!(field, "spec.name");
        assert_eq!(cause, "invalid string value: data is not UTF-8 encoded");
    }

    #[test]
    fn a_oneof_member_is_named_by_its_field_not_the_oneof() {
        let msg = "failed to decode Protobuf message: Command.program: TaskTemplate.kind: JobSpec.task: SubmitJobRequest.spec: invalid string value: data is not UTF-8 encoded";
        let (field, _) = field_of(msg).unwrap();
        assert_eq!(field, "spec.task.command.program");
        let msg = "failed to decode Protobuf message: Simulated.duration_ms: TaskTemplate.kind: JobSpec.task: SubmitJobRequest.spec: invalid varint";
        let (field, _) = field_of(msg).unwrap();
        assert_eq!(field, "spec.task.simulated.duration_ms");
    }

    #[test]
    fn a_oneof_member_that_does_not_decode_ends_the_path_at_its_message() {
        let msg = "failed to decode Protobuf message: TaskTemplate.kind: JobSpec.task: SubmitJobRequest.spec: buffer underflow";
        let (field, cause) = field_of(msg).unwrap();
        assert_eq!(field, "spec.task");
        assert_eq!(cause, "buffer underflow");
    }

    #[test]
    fn every_oneof_of_the_protos_is_known() {
        // Guards against a oneof whose members could not be resolved.
        let known = oneofs();
        assert!(known.contains_key(&("TaskTemplate".into(), "kind".into(), "Command".into())));
        assert!(known.contains_key(&(
            "SubmitJobResult".into(),
            "outcome".into(),
            "ItemError".into()
        )));
    }

    #[test]
    fn other_internal_errors_are_left_alone() {
        assert!(field_of("database on fire").is_none());
    }
}
