//! Query strings of the GET routes, read into the same request messages
//! the gRPC API takes.
//!
//! Owns turning `key=value` pairs into the proto3 JSON of a request message
//! by its descriptor (repeated fields by repetition or commas, messages as
//! JSON, numbers and booleans by the field's type), so that the message is
//! then checked by the one JSON mapping of `crate::json`. It must never
//! judge a value: anything it cannot read is handed on as a string, and the
//! JSON mapping refuses it naming the field.

use prost_reflect::{FieldDescriptor, Kind};
use serde_json::{Map, Value};

use crate::descriptors;
use crate::error::Result;
use crate::json;

/// A request message read from a query string.
pub struct QueryMessage {
    name: &'static str,
    object: Map<String, Value>,
}

impl QueryMessage {
    /// Reads `pairs` as fields of message `name`; `aliases` maps other
    /// parameter names to field names (`state` for `states`).
    pub fn read(
        name: &'static str,
        pairs: Vec<(String, String)>,
        aliases: &[(&str, &str)],
    ) -> Result<Self> {
        let desc = descriptors::message(name)?;
        let mut object = Map::new();
        for (key, value) in pairs {
            let key = aliases
                .iter()
                .find(|(alias, _)| *alias == key)
                .map_or(key, |(_, field)| (*field).to_string());
            let Some(field) = desc
                .get_field_by_name(&key)
                .or_else(|| desc.get_field_by_json_name(&key))
            else {
                // Refused by the JSON mapping as an unknown field.
                object.insert(key, Value::String(value));
                continue;
            };
            if field.is_list() {
                let items = object
                    .entry(field.name().to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = items {
                    items.extend(list_items(&field, value));
                }
            } else {
                object.insert(field.name().to_string(), one_value(&field.kind(), value));
            }
        }
        Ok(QueryMessage { name, object })
    }

    /// Sets field `name` (a value from the route's path, which wins over
    /// the query string).
    pub fn set(&mut self, name: &str, value: Value) {
        self.object.insert(name.to_string(), value);
    }

    /// The request message.
    pub fn into_message<M: prost::Message + Default>(self) -> Result<M> {
        json::from_value(self.name, Value::Object(self.object))
    }
}

/// The items one parameter adds to a repeated field: a JSON array or value
/// for messages (`label_selector={"key":"team","op":"LABEL_OPERATOR_IN",
/// "values":["a"]}`), comma-separated values otherwise.
fn list_items(field: &FieldDescriptor, value: String) -> Vec<Value> {
    match field.kind() {
        Kind::Message(_) => match serde_json::from_str(&value) {
            Ok(Value::Array(items)) => items,
            Ok(item) => vec![item],
            Err(_) => vec![Value::String(value)],
        },
        kind => value
            .split(',')
            .map(|v| one_value(&kind, v.to_string()))
            .collect(),
    }
}

/// One parameter's value as the JSON the field's type takes.
fn one_value(kind: &Kind, value: String) -> Value {
    match kind {
        Kind::Bool => value
            .parse::<bool>()
            .map_or(Value::String(value), Value::Bool),
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64 => value
            .parse::<i64>()
            .map_or(Value::String(value), Value::from),
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => value
            .parse::<u64>()
            .map_or(Value::String(value), Value::from),
        Kind::Message(_) => serde_json::from_str(&value).unwrap_or(Value::String(value)),
        // Base64 has no spaces, so a space can only be a `+` that a client
        // left unescaped and the query decoding turned into a space.
        Kind::Bytes => Value::String(value.replace(' ', "+")),
        _ => Value::String(value),
    }
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::{JobState, LabelOperator, ListJobsRequest, WatchJobsRequest};

    use super::*;

    fn pairs(raw: &[(&str, &str)]) -> Vec<(String, String)> {
        raw.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn repeated_fields_take_repetitions_commas_and_json_messages() {
        let req: ListJobsRequest = QueryMessage::read(
            "ListJobsRequest",
            pairs(&[
                ("state", "JOB_STATE_PENDING,JOB_STATE_ROUTED"),
                ("states", "JOB_STATE_RUNNING"),
                (
                    "label_selector",
                    r#"{"key":"team","op":"LABEL_OPERATOR_IN","values":["ml","ops"]}"#,
                ),
                (
                    "labelSelector",
                    r#"[{"key":"gpu","op":"LABEL_OPERATOR_EXISTS"}]"#,
                ),
                ("page_size", "20"),
                ("include_tasks", "true"),
            ]),
            &[("state", "states")],
        )
        .and_then(QueryMessage::into_message)
        .unwrap();
        assert_eq!(
            req.states,
            vec![
                JobState::Pending as i32,
                JobState::Routed as i32,
                JobState::Running as i32
            ]
        );
        let keys: Vec<&str> = req.label_selector.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["team", "gpu"]);
        assert_eq!(req.label_selector[0].op, LabelOperator::In as i32);
        assert_eq!((req.page_size, req.include_tasks), (20, true));
    }

    #[test]
    fn an_unescaped_plus_in_a_cursor_reads_as_the_base64_it_was() {
        // 0xfb 0xef 0xbe is "++++" in base64; the query decoding made it
        // spaces.
        let req: WatchJobsRequest =
            QueryMessage::read("WatchJobsRequest", pairs(&[("cursor", "    ")]), &[])
                .and_then(QueryMessage::into_message)
                .unwrap();
        assert_eq!(req.cursor, vec![0xfb, 0xef, 0xbe]);
    }

    #[test]
    fn what_cannot_be_read_is_refused_naming_the_field() {
        for (key, value, field) in [
            ("page_size", "many", "page_size"),
            ("include_tasks", "yes please", "include_tasks"),
            ("label_selector", "team=ml", "label_selector"),
            ("colour", "blue", "colour"),
        ] {
            let err = QueryMessage::read("ListJobsRequest", pairs(&[(key, value)]), &[])
                .and_then(QueryMessage::into_message::<ListJobsRequest>)
                .unwrap_err();
            assert!(
                err.field().is_some_and(|f| f.starts_with(field)),
                "{key}: {err}"
            );
        }
    }
}
