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
