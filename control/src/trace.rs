//! Trace ids of jobs: one id per job, carried by every tier that handles it.
//!
//! Owns the id's form (W3C Trace Context: 16 bytes, written as 32 lowercase
//! hex digits, never all zero), parsing the `traceparent` header or gRPC
//! metadata a client sends with a submit, writing one for an outgoing call,
//! and the span and event conventions the tiers share: every job-path span
//! has a `trace_id` field, and per-job events go to the [`TARGET`] target so
//! that `RUST_LOG=info,meridian_trace=debug` turns them on in every process
//! without flooding the logs of a busy federation by default.
//!
//! With the `otel` feature, [`link`] also makes a span a child of the job's
//! trace in OpenTelemetry, so the spans of one job exported by different
//! processes share one trace.
//!
//! Fresh trace and span ids are drawn through [`crate::entropy`], like boot
//! ids: from the operating system in production, from the run's seed in the
//! simulation, so a replayed seed carries the same ids.
//!
//! Must never: take part in a decision (a trace id is only a label), draw
//! an id from anywhere but [`crate::entropy`], or reject a request because
//! its `traceparent` is malformed (it is ignored instead, as W3C Trace
//! Context asks).

use std::fmt;
use std::str::FromStr;

/// Name of the W3C header and of the gRPC metadata key carrying a trace.
pub const TRACEPARENT: &str = "traceparent";

/// Tracing target of per-job events (`submit`, `route`, `place`, `run`).
pub const TARGET: &str = "meridian_trace";

/// A job's trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// Why a string is not a trace id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceIdError {
    /// Not 32 hex digits.
    #[error("a trace id is 32 lowercase hex digits")]
    Malformed,
    /// All zero, which W3C Trace Context reserves as invalid.
    #[error("a trace id must not be all zero")]
    Zero,
}

impl TraceId {
    /// A fresh random id.
    pub fn generate() -> Self {
        let bytes = *crate::entropy::uuid_v4().as_bytes();
        if bytes == [0; 16] {
            // Unreachable in practice (v4 sets version bits); keeps the
            // never-zero promise without a panic.
            return TraceId([1; 16]);
        }
        TraceId(bytes)
    }

    /// The id as bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The trace id of a `traceparent` value (`00-<trace>-<parent>-<flags>`),
    /// `None` when it is missing or malformed.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        // Version ff is invalid; version 00 has exactly four fields, later
        // versions may append more (which a 00 parser must tolerate).
        let version_ok = version.len() == 2 && is_lower_hex(version) && version != "ff";
        let rest_ok = version != "00" || parts.next().is_none();
        let parent_ok = parent.len() == 16 && is_lower_hex(parent) && parent != "0000000000000000";
        let flags_ok = flags.len() == 2 && is_lower_hex(flags);
        if !(version_ok && rest_ok && parent_ok && flags_ok) {
            return None;
        }
        trace.parse().ok()
    }

    /// The id of an incoming request's `traceparent`, or a fresh one.
    pub fn from_traceparent_or_generate(value: Option<&str>) -> Self {
        value
            .and_then(TraceId::from_traceparent)
            .unwrap_or_else(TraceId::generate)
    }

    /// A `traceparent` value for an outgoing call in this trace, with a
    /// fresh parent (span) id and the sampled flag.
    pub fn traceparent(self) -> String {
        let span = crate::entropy::uuid_v4();
        let span_id = &span.as_bytes()[..8];
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.0);
        out.push('-');
        if span_id.iter().all(|b| *b == 0) {
            out.push_str("0000000000000001");
        } else {
            push_hex(&mut out, span_id);
        }
        out.push_str("-01");
        out
    }
}

/// A stored trace id (`Job.trace_id` and the messages carrying it): the id,
/// or `None` for an empty or malformed field (records from before trace ids
/// existed).
pub fn stored(field: &str) -> Option<TraceId> {
    field.parse().ok()
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

impl FromStr for TraceId {
    type Err = TraceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !is_lower_hex(s) {
            return Err(TraceIdError::Malformed);
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| TraceIdError::Malformed)?;
        }
        if bytes == [0; 16] {
            return Err(TraceIdError::Zero);
        }
        Ok(TraceId(bytes))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.0);
        f.write_str(&s)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// Makes `span` part of the job's trace in OpenTelemetry (when the `otel`
/// feature is on and an OpenTelemetry layer is installed; otherwise it does
/// nothing). Every tier calls it on its job-path span, so the spans of one
/// job share one OpenTelemetry trace across processes.
pub fn link(span: &tracing::Span, trace: Option<TraceId>) {
    #[cfg(feature = "otel")]
    if let Some(trace) = trace {
        otel::set_parent(span, trace);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, trace);
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId as OtelTraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceId;

    pub(super) fn set_parent(span: &tracing::Span, trace: TraceId) {
        // The remote parent stands for the job as a whole: its span id is
        // derived from the trace id, so every tier names the same parent.
        let bytes = trace.to_bytes();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&bytes[8..]);
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        let parent = SpanContext::new(
            OtelTraceId::from_bytes(bytes),
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(parent);
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_yields_its_trace_id() {
        let id =
            TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            id.map(|t| t.to_string()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn malformed_or_zero_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceId::from_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_with_extra_fields_is_accepted() {
        assert!(
            TraceId::from_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
            )
            .is_some()
        );
    }

    #[test]
    fn a_generated_traceparent_round_trips_to_the_same_id() {
        let id = TraceId::generate();
        let header = id.traceparent();
        assert_eq!(header.len(), 55);
        assert_eq!(TraceId::from_traceparent(&header), Some(id));
        assert_eq!(stored(&id.to_string()), Some(id));
    }

    #[test]
    fn an_absent_traceparent_gets_a_fresh_id() {
        let a = TraceId::from_traceparent_or_generate(None);
        let b = TraceId::from_traceparent_or_generate(Some("garbage"));
        assert_ne!(a, b);
        assert_eq!(stored(""), None);
    }
}
