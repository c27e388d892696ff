//! `GET /metrics`: Prometheus text format. Counters and histograms come from
//! the `metrics` facade (use cases, relay); hub gauges are read at scrape time.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::State;

/// The process-wide recorder, installed once (tests build several apps).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("smartscheduler_publish_lag_seconds".into()),
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )
            .expect("valid buckets")
            // Time from assignment to the contractor's first acknowledgement:
            // seconds to the escalation deadline's minutes.
            .set_buckets_for_metric(
                Matcher::Full("smartscheduler_acknowledgement_seconds".into()),
                &[1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0],
            )
            .expect("valid buckets")
            .install_recorder()
            .expect("the metrics recorder is installed once")
    })
}

/// Renders every metric.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Every metric, in the Prometheus text format 0.0.4.", content_type = "text/plain", body = String)))]
pub async fn render(state: State) -> HttpResponse {
    if let Ok((pending, failed)) = state.event_log.backlog().await {
        metrics::gauge!("smartscheduler_events_pending").set(pending as f64);
        metrics::gauge!("smartscheduler_events_failed").set(failed as f64);
    }
    if let Ok(stats) = state.hub.hub.stats().await {
        metrics::gauge!("smartscheduler_hub_connections").set(stats.connections as f64);
        metrics::gauge!("smartscheduler_hub_groups").set(stats.groups as f64);
        metrics::gauge!("smartscheduler_hub_messages_sent").set(stats.frames_sent as f64);
        metrics::gauge!("smartscheduler_hub_slow_client_closes").set(stats.slow_closes as f64);
        metrics::gauge!("smartscheduler_hub_messages_dropped").set(stats.frames_dropped as f64);
        metrics::gauge!("smartscheduler_hub_parked_connections").set(stats.parked as f64);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(handle().render())
}
