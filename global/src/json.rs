//! JSON <-> protobuf for the HTTP API, by the standard proto3 JSON mapping.
//!
//! Owns converting request bodies into the same prost messages the gRPC API
//! takes (through the descriptors of `meridian-proto`), naming the field
//! that could not be converted (bad UTF-8 included), and rendering
//! responses with proto field names. It must never accept a body the gRPC API would not (unknown
//! fields and unknown enum names are errors).

use std::sync::OnceLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use crate::error::{GlobalError, Result};

static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();

fn descriptor(name: &str) -> Result<MessageDescriptor> {
    let pool = POOL
        .get_or_init(|| DescriptorPool::decode(meridian_proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
        .ok_or_else(|| GlobalError::Corrupt("embedded descriptor set does not decode".into()))?;
    pool.get_message_by_name(&format!("meridian.v1.{name}"))
        .ok_or_else(|| GlobalError::Corrupt(format!("no message meridian.v1.{name}")))
}

/// Parses a JSON body into message `name` (e.g. `SubmitJobRequest`).
pub fn parse<M: prost::Message + Default>(name: &str, body: &[u8]) -> Result<M> {
    let value: Value = if body.is_empty() {
        Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| match std::str::from_utf8(body) {
            Err(bad) => not_utf8(name, body, bad.valid_up_to()),
            Ok(_) => GlobalError::invalid("body", format!("not valid JSON: {e}")),
        })?
    };
    from_value(name, value)
}

/// One step of a path into a JSON document.
enum Step {
    Key(String),
    Index(usize),
}

/// A body with bad UTF-8 at byte `at`: names the string field holding it by
/// its proto path, as the gRPC API does, or the body when the bytes are not
/// inside a string value.
fn not_utf8(name: &str, body: &[u8], at: usize) -> GlobalError {
    let message = format!("invalid string value: not UTF-8 at byte {at}");
    let field = steps_at(body, at)
        .and_then(|steps| descriptor(name).ok().map(|desc| proto_path(&desc, &steps)))
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "body".to_string());
    GlobalError::invalid(field, message)
}

/// The keys and indexes leading to the string value that byte `at` of a JSON
/// text is in, or `None` when it is not in a string value (a key, or between
/// tokens). Only the bytes before `at` are read, and they are valid UTF-8.
fn steps_at(body: &[u8], at: usize) -> Option<Vec<Step>> {
    // Per open container: the step to it from its parent, and for objects
    // whether the next string is a key.
    let mut stack: Vec<(Option<Step>, bool)> = Vec::new();
    let mut next: Option<Step> = None;
    let mut in_string = false;
    let mut escaped = false;
    let mut is_key = false;
    let mut key = Vec::new();
    for &b in body.get(..at)? {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if is_key {
                    next = Some(Step::Key(String::from_utf8_lossy(&key).into_owned()));
                }
                continue;
            }
            if is_key {
                key.push(b);
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                is_key = stack.last().is_some_and(|(_, expects_key)| *expects_key);
                key.clear();
            }
            b'{' => stack.push((next.take(), true)),
            b'[' => {
                stack.push((next.take(), false));
                next = Some(Step::Index(0));
            }
            // Back in the parent, at the step to the container just closed
            // (an array's index goes on counting from it).
            b'}' | b']' => next = stack.pop().and_then(|(step, _)| step),
            b':' => {
                if let Some(top) = stack.last_mut() {
                    top.1 = false;
                }
            }
            b',' => match stack.last_mut() {
                Some((_, expects_key @ false)) if matches!(next, Some(Step::Key(_))) => {
                    *expects_key = true;
                    next = None;
                }
                Some(_) => {
                    if let Some(Step::Index(i)) = &mut next {
                        *i += 1;
                    }
                }
                None => {}
            },
            _ => {}
        }
    }
    if !in_string || is_key {
        return None;
    }
    let mut steps: Vec<Step> = stack.into_iter().filter_map(|(step, _)| step).collect();
    steps.extend(next);
    Some(steps)
}

/// Turns JSON keys (proto or lowerCamelCase names) into a proto path,
/// stopping at the first key the descriptor does not know.
fn proto_path(desc: &MessageDescriptor, steps: &[Step]) -> String {
    let mut path = String::new();
    let mut desc = Some(desc.clone());
    let mut steps = steps.iter();
    while let Some(step) = steps.next() {
        let (Step::Key(key), Some(d)) = (step, desc.take()) else {
            break;
        };
        let Some(field) = d
            .get_field_by_json_name(key)
            .or_else(|| d.get_field_by_name(key))
        else {
            break;
        };
        path = join(&path, field.name());
        if field.is_map() {
            if let Some(Step::Key(k)) = steps.next() {
                path.push_str(&format!("[{k:?}]"));
            }
            break;
        }
        if field.is_list() {
            match steps.next() {
                Some(Step::Index(i)) => path.push_str(&format!("[{i}]")),
                _ => break,
            }
        }
        if let Kind::Message(m) = field.kind() {
            desc = Some(m);
        }
    }
    path
}

/// Converts a JSON value into message `name`.
pub fn from_value<M: prost::Message + Default>(name: &str, value: Value) -> Result<M> {
    let desc = descriptor(name)?;
    let dynamic = match DynamicMessage::deserialize(desc.clone(), value.clone()) {
        Ok(d) => d,
        Err(err) => {
            let (field, message) =
                locate(&desc, &value, "").unwrap_or_else(|| ("body".to_string(), err.to_string()));
            return Err(GlobalError::invalid(field, message));
        }
    };
    M::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| GlobalError::invalid("body", e.to_string()))
}

/// Renders message `name` as JSON with proto field names.
pub fn render<M: prost::Message>(name: &str, message: &M) -> Result<Value> {
    let desc = descriptor(name)?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| GlobalError::Corrupt(format!("rendering {name}: {e}")))
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Finds the first field of `value` that does not convert, as a proto path.
fn locate(desc: &MessageDescriptor, value: &Value, path: &str) -> Option<(String, String)> {
    let Value::Object(map) = value else {
        let at = if path.is_empty() { "body" } else { path };
        return Some((at.to_string(), "expected a JSON object".to_string()));
    };
    for (key, v) in map {
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            return Some((join(path, key), "unknown field".to_string()));
        };
        let at = join(path, field.name());
        if v.is_null() {
            continue;
        }
        let single = |v: &Value| -> Option<(String, String)> {
            let mut one = serde_json::Map::new();
            one.insert(key.clone(), v.clone());
            DynamicMessage::deserialize(desc.clone(), Value::Object(one))
                .err()
                .map(|e| (at.clone(), e.to_string()))
        };
        match (field.kind(), v) {
            (Kind::Message(m), Value::Array(items)) if field.is_list() => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(found) = locate(&m, item, &format!("{at}[{i}]")) {
                        return Some(found);
                    }
                }
            }
            (Kind::Message(m), Value::Object(_)) if !field.is_list() && !field.is_map() => {
                if let Some(found) = locate(&m, v, &at) {
                    return Some(found);
                }
            }
            _ => {
                if let Some(found) = single(v) {
                    return Some(found);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::SubmitJobRequest;

    use super::*;

    #[test]
    fn an_unknown_enum_name_is_refused_naming_its_field() {
        let body =
            br#"{"request_id":"r","spec":{"name":"n","placement":"PLACEMENT_POLICY_SIDEWAYS"}}"#;
        let err = parse::<SubmitJobRequest>("SubmitJobRequest", body).unwrap_err();
        assert_eq!(err.field(), Some("spec.placement"));
    }

    #[test]
    fn camel_case_and_proto_names_both_parse() {
        let a: SubmitJobRequest = parse(
            "SubmitJobRequest",
            br#"{"requestId":"r","spec":{"taskCount":3}}"#,
        )
        .unwrap();
        let b: SubmitJobRequest = parse(
            "SubmitJobRequest",
            br#"{"request_id":"r","spec":{"task_count":3}}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.spec.unwrap().task_count, 3);
    }

    #[test]
    fn bad_utf8_is_named_by_the_proto_path_of_its_string() {
        let cases: [(&[u8], &str); 6] = [
            (
                b"{\"spec\":{\"nodeConstraints\":[{\"key\":\"a\",\"op\":1},{\"op\":1,\"key\":\"b\xff\"}]}}",
                "spec.node_constraints[1].key",
            ),
            (
                b"{\"spec\":{\"task\":{\"command\":{\"program\":\"/\xff\"}}}}",
                "spec.task.command.program",
            ),
            (
                b"{\"requestId\":\"r\",\"spec\":{\"taskCount\":1,\"name\":\"\\\"\xfe\"}}",
                "spec.name",
            ),
            (
                b"{\"spec\":{\"allowedRegions\":[\"a\",\"b\xff\"]}}",
                "spec.allowed_regions[1]",
            ),
            (
                b"{\"spec\":{\"labels\":{\"team\":\"x\xff\"}}}",
                "spec.labels[\"team\"]",
            ),
            (b"{\"spec\":{\"na\xffme\":\"x\"}}", "body"),
        ];
        for (body, field) in cases {
            let err = parse::<SubmitJobRequest>("SubmitJobRequest", body).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn an_unknown_field_is_refused_naming_it() {
        let err =
            parse::<SubmitJobRequest>("SubmitJobRequest", br#"{"spec":{"colour":1}}"#).unwrap_err();
        assert_eq!(err.field(), Some("spec.colour"));
    }
}
