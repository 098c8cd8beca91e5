//! Turns undecodable requests into INVALID_ARGUMENT naming the field.
//!
//! tonic answers a request that fails to decode (for example a string field
//! holding bad UTF-8) with INTERNAL; the Meridian convention is
//! INVALID_ARGUMENT with the field's proto path. This module owns that
//! rewrite, applied to every gRPC response as a tower layer. It must never
//! touch any other response.

use tonic::{Code, Status};

const PREFIX: &str = "failed to decode Protobuf message: ";

/// The proto path of the field a prost decode error names, outermost first
/// (`spec.name`), and the cause.
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
                fields.push(field.to_string());
                cause = after;
            }
            _ => break,
        }
    }
    fields.reverse();
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
    fn other_internal_errors_are_left_alone() {
        assert!(field_of("database on fire").is_none());
    }
}
