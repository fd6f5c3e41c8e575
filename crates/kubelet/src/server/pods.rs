//! `GET /pods` (the pods this node runs, as a `PodList`, with the statuses the kubelet last
//! computed) and `GET /configz` (the resolved configuration).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::AppState;
use crate::pod::status::PodKey;

/// A JSON response.
pub(super) fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => ([(http::header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {error}\n"),
        )
            .into_response(),
    }
}

/// The pods bound to this node, each with its newest status.
pub async fn pods(State(state): State<Arc<AppState>>) -> Response {
    let items: Vec<_> = state
        .view
        .pods
        .list()
        .iter()
        .map(|pod| {
            let mut pod = (**pod).clone();
            if let Some(status) = state.view.status.get(&PodKey::of(&pod)) {
                pod.status = Some(status);
            }
            pod
        })
        .collect();
    json(&serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    }))
}

/// The configuration in force, under `kubeletconfig` as upstream's configz serves it.
pub async fn configz(State(state): State<Arc<AppState>>) -> Response {
    let mut config = match serde_json::to_value(&state.config) {
        Ok(config) => config,
        Err(error) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the configuration: {error}\n"),
            )
                .into_response();
        }
    };
    if let Some(fields) = config.as_object_mut() {
        fields.insert("kind".into(), "KubeletConfiguration".into());
        fields.insert("apiVersion".into(), "kubelet.config.k8s.io/v1beta1".into());
    }
    json(&serde_json::json!({ "kubeletconfig": config }))
}
