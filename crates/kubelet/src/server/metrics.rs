//! `GET /metrics` (the kubelet's and the runtime's metrics, through prometheus-client),
//! `GET /metrics/resource` (CPU and memory for metrics-server), `GET /metrics/cadvisor`
//! (cAdvisor's container series), `GET /metrics/probes` (the prober's results) and
//! `GET /stats/summary`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};

use super::pods::json;
use super::{AppState, exposition};
use crate::stats::{cadvisor, resource, summary};

/// The kubelet's metrics: OpenMetrics if the scraper asks for it, else Prometheus text 0.0.4.
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    state.view.metrics.refresh(&state.view.stats);
    encoded(&state.view.registry, &headers)
}

/// The prober's metrics (`prober_probe_total`), as upstream serves them on
/// `/metrics/probes`, in the same formats as `/metrics`.
pub async fn probe_metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    encoded(&state.view.metrics.probes.registry(), &headers)
}

/// `registry` in the format the `Accept` header asks for (OpenMetrics, else text 0.0.4).
fn encoded(registry: &prometheus_client::registry::Registry, headers: &HeaderMap) -> Response {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        )
            .into_response();
    }
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    if exposition::wants_openmetrics(accept) {
        (
            [(http::header::CONTENT_TYPE, exposition::OPENMETRICS)],
            text,
        )
            .into_response()
    } else {
        (
            [(http::header::CONTENT_TYPE, exposition::TEXT)],
            exposition::openmetrics_to_text(&text),
        )
            .into_response()
    }
}

fn current_summary(state: &AppState) -> summary::Summary {
    summary::summary(
        &state.view.stats,
        &state.config.node_name,
        &state.config.data_dir,
    )
}

/// Resource usage in the format metrics-server scrapes.
pub async fn resource_metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        resource::encode(&current_summary(&state)),
    )
        .into_response()
}

/// cAdvisor's container series (`container_*`, `machine_*`), as the kubelet serves them.
pub async fn cadvisor_metrics(State(state): State<Arc<AppState>>) -> Response {
    let summary = current_summary(&state);
    let device = cadvisor::device_of(&state.config.data_dir);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        cadvisor::encode(&state.view.stats, &summary, &device),
    )
        .into_response()
}

/// The stats summary (`k8s.io/kubelet/pkg/apis/stats/v1alpha1.Summary`).
pub async fn stats_summary(State(state): State<Arc<AppState>>) -> Response {
    json(&current_summary(&state))
}
