//! OpenTelemetry traces, sent over OTLP/HTTP (protobuf) when an endpoint is configured
//! (`--otlp-endpoint`), off otherwise.
//!
//! Off, nothing is installed: spans stay plain `tracing` spans, and [`enabled`] is false so
//! publishers skip putting a trace context into the bus envelope (no cost per message). On, a
//! `tracing-opentelemetry` layer turns spans into OpenTelemetry spans, sampled at
//! `--trace-sample-ratio` (a publication's root decides; everything under it follows), and a
//! batch exporter sends them from its own thread. A publication's trace crosses processes in
//! the bus envelope as a W3C `traceparent`/`tracestate` pair ([`current_context`] on the
//! publishing side, [`continue_from`] on the receiving side).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--trace-sample-ratio must be between 0 and 1, got {0}")]
    BadRatio(f64),
    #[error("the OTLP exporter for {endpoint} could not be built: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Whether traces are being recorded and exported by this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Builds the exporter and the tracer provider for `service`, sending to
/// `<endpoint>/v1/traces`. Returns the layer to add to the subscriber.
pub(crate) fn layer<S>(
    endpoint: &str,
    ratio: f64,
    service: &str,
) -> Result<
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    TraceError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    if !(0.0..=1.0).contains(&ratio) {
        return Err(TraceError::BadRatio(ratio));
    }
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| TraceError::Exporter {
            endpoint: url,
            reason: e.to_string(),
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("chorus");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Sends the spans still buffered and stops the exporter; call once, as the process ends.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "flushing traces at exit failed");
    }
}

/// The current span's trace context as W3C `(traceparent, tracestate)`, for a message that
/// continues the trace in another process; `None` when tracing is off or the span is not
/// sampled.
pub fn current_context() -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let parent = carrier.remove(TRACEPARENT)?;
    Some((parent, carrier.remove(TRACESTATE).unwrap_or_default()))
}

/// Makes `span` a child of the trace a message carried (`traceparent`, `tracestate`); does
/// nothing when tracing is off or the message carries no context.
pub fn continue_from(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    if !enabled() || traceparent.is_empty() {
        return;
    }
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if !tracestate.is_empty() {
        carrier.insert(TRACESTATE.to_owned(), tracestate.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_nothing_is_carried_and_nothing_continued() {
        assert!(!enabled());
        let span = tracing::info_span!("publish");
        let _entered = span.enter();
        assert_eq!(current_context(), None);
        // A message's context is ignored while off (and an empty one always).
        continue_from(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "",
        );
    }
}
