//! `GET /metrics` (the kubelet's and the runtime's metrics, through prometheus-client),
//! `GET /metrics/resource` (CPU and memory for metrics-server) and `GET /stats/summary`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::AppState;
use super::pods::json;
use crate::stats::{resource, summary};

/// The kubelet's metrics in the OpenMetrics text format (which Prometheus reads).
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.view.metrics.refresh(&state.view.stats);
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &state.view.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {error}\n"),
        )
            .into_response();
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
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

/// The stats summary (`k8s.io/kubelet/pkg/apis/stats/v1alpha1.Summary`).
pub async fn stats_summary(State(state): State<Arc<AppState>>) -> Response {
    json(&current_summary(&state))
}
