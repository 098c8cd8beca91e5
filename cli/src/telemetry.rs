//! Logging and span export of a `meridian` process.
//!
//! Owns the process's `tracing` subscriber: human-readable logs on standard
//! error filtered by `RUST_LOG` (default `info`), and, when an OTLP endpoint
//! is given (`--otlp-endpoint URL` or `OTEL_EXPORTER_OTLP_ENDPOINT`), an
//! OpenTelemetry layer exporting spans over OTLP/gRPC in batches. Export is
//! off by default and compiled only with the `otlp` feature (on by default).
//! The exported spans keep their `trace_id` field, and job-path spans are
//! parented to the job's trace (`meridian_control::trace::link`), so one
//! job's spans from every process land in one OpenTelemetry trace.
//!
//! Must never: block a process's start on the collector (the exporter
//! connects lazily and drops spans it cannot deliver), or install a second
//! subscriber.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The OpenTelemetry flag shared by `meridian global|regional|agent|dev`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Export spans over OTLP/gRPC to this collector, e.g.
    /// `http://127.0.0.1:4317`; off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("--otlp-endpoint {0:?}: expected an http:// or https:// URL")]
    BadEndpoint(String),
    /// This binary was built without the `otlp` feature.
    #[error("--otlp-endpoint given, but this binary was built without OTLP export")]
    NotBuiltIn,
    /// The exporter could not be built.
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
    /// A subscriber was installed already.
    #[error("installing the tracing subscriber: {0}")]
    Install(String),
}

/// Keeps span export going; [`Telemetry::shutdown`] flushes what is left.
#[must_use = "dropping the guard without shutdown loses the last spans"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.provider.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }

    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider {
            // Shutting down waits for the last export, which must not hold
            // a runtime worker.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = flushed {
                eprintln!("warning: flushing spans: {err}");
            }
        }
    }
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

fn fmt_layer() -> impl Layer<Registry> + Send + Sync {
    use std::io::IsTerminal;
    tracing_subscriber::fmt::layer()
        // Logs on stderr: stdout carries command output and readiness lines.
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and pipes stay greppable
        // (`grep trace_id=...`).
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(log_filter())
}

/// Checks an endpoint without touching the network.
pub fn check_endpoint(endpoint: &str) -> Result<(), TelemetryError> {
    let ok = ["http://", "https://"].iter().any(|p| {
        endpoint
            .strip_prefix(p)
            .is_some_and(|rest| !rest.is_empty())
    });
    if ok {
        Ok(())
    } else {
        Err(TelemetryError::BadEndpoint(endpoint.to_string()))
    }
}

/// Installs the process's subscriber: logs, plus span export to
/// `otlp_endpoint` when given, under the OpenTelemetry service name
/// `service` (`meridian-global`, ...). Must be called inside a Tokio
/// runtime when exporting.
pub fn init(service: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let Some(endpoint) = otlp_endpoint.filter(|e| !e.is_empty()) else {
        Registry::default()
            .with(fmt_layer())
            .try_init()
            .map_err(|e| TelemetryError::Install(e.to_string()))?;
        return Ok(Telemetry {
            #[cfg(feature = "otlp")]
            provider: None,
        });
    };
    check_endpoint(endpoint)?;
    #[cfg(feature = "otlp")]
    {
        let provider = otlp::provider(service, endpoint)?;
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "meridian");
        // Spans are exported at info and above whatever RUST_LOG says, so
        // a quiet log still yields whole traces.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        Registry::default()
            .with(fmt_layer())
            .with(otel)
            .try_init()
            .map_err(|e| TelemetryError::Install(e.to_string()))?;
        Ok(Telemetry {
            provider: Some(provider),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = service;
        Err(TelemetryError::NotBuiltIn)
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::TelemetryError;

    pub(super) fn provider(
        service: &str,
        endpoint: &str,
    ) -> Result<SdkTracerProvider, TelemetryError> {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_string())
                    .build(),
            )
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("https://collector:4317").is_ok());
        for bad in ["127.0.0.1:4317", "http://", "grpc://x:1", ""] {
            assert!(
                matches!(check_endpoint(bad), Err(TelemetryError::BadEndpoint(_))),
                "{bad:?}"
            );
        }
    }
}
