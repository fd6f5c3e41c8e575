//! `GET /containerLogs/{namespace}/{pod}/{container}`: what `kubectl logs` reaches through the
//! API server, with the query parameters it forwards.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::{ApiError, AppState};
use crate::log::reader::{LogOptions, find_run, stream_log};

/// Streams a container's log; see [`LogOptions`] for the parameters.
pub async fn container_logs(
    State(state): State<Arc<AppState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let options = parse_options(&query, Timestamp::now())?;
    let run = find_run(
        &state.config.pod_logs_dir,
        &namespace,
        &pod,
        &container,
        options.previous,
    )?;
    // The file is opened by the task; a race with its removal only ends the stream early.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        if let Err(error) = stream_log(run, options, tx).await {
            tracing::warn!(%error, "streaming a container log");
        }
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(Bytes::from(chunk)), rx))
    });
    Ok((
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Reads the query as the API server sends it (`follow=true&tailLines=10...`).
pub fn parse_options(
    query: &HashMap<String, String>,
    now: Timestamp,
) -> Result<LogOptions, ApiError> {
    let flag = |name: &str| -> Result<bool, ApiError> {
        match query.get(name).map(String::as_str) {
            None | Some("") => Ok(false),
            // As Go's strconv.ParseBool, which the API server's own parameters go through.
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{name}={other:?} is not a boolean"
            ))),
        }
    };
    let number = |name: &str, min: i64| -> Result<Option<i64>, ApiError> {
        query
            .get(name)
            .map(|v| match v.parse::<i64>() {
                Ok(n) if n >= min => Ok(n),
                _ => Err(ApiError::BadRequest(format!(
                    "{name}={v:?} must be an integer of at least {min}"
                ))),
            })
            .transpose()
    };
    let since_seconds = number("sinceSeconds", 1)?;
    let since_time = query
        .get("sinceTime")
        .map(|v| {
            v.parse::<Timestamp>().map_err(|e| {
                ApiError::BadRequest(format!("sinceTime={v:?} is not an RFC 3339 time: {e}"))
            })
        })
        .transpose()?;
    let since = match (since_seconds, since_time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "at most one of sinceTime or sinceSeconds may be given".into(),
            ));
        }
        (Some(seconds), None) => Some(
            now.checked_sub(jiff::SignedDuration::from_secs(seconds))
                .unwrap_or(Timestamp::MIN),
        ),
        (None, time) => time,
    };
    Ok(LogOptions {
        follow: flag("follow")?,
        tail_lines: number("tailLines", 0)?.map(|n| n as u64),
        timestamps: flag("timestamps")?,
        since,
        limit_bytes: number("limitBytes", 1)?.map(|n| n as u64),
        previous: flag("previous")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_as_the_api_server_forwards_them() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let options = parse_options(
            &query(&[
                ("follow", "true"),
                ("tailLines", "3"),
                ("timestamps", "true"),
                ("sinceSeconds", "60"),
                ("limitBytes", "100"),
                ("previous", "false"),
            ]),
            now,
        )
        .expect("options");
        assert_eq!(
            options,
            LogOptions {
                follow: true,
                tail_lines: Some(3),
                timestamps: true,
                since: Some("2026-01-01T00:00:00Z".parse().expect("time")),
                limit_bytes: Some(100),
                previous: false,
            }
        );
        let since = parse_options(&query(&[("sinceTime", "2026-01-01T00:00:30Z")]), now)
            .expect("sinceTime");
        assert_eq!(
            since.since,
            Some("2026-01-01T00:00:30Z".parse().expect("time"))
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let now = Timestamp::now();
        for (pairs, named) in [
            (&[("tailLines", "-1")][..], "tailLines"),
            (&[("follow", "yes")][..], "follow"),
            (&[("sinceTime", "yesterday")][..], "sinceTime"),
            (&[("limitBytes", "0")][..], "limitBytes"),
            (
                &[("sinceTime", "2026-01-01T00:00:30Z"), ("sinceSeconds", "5")][..],
                "sinceSeconds",
            ),
        ] {
            let error = parse_options(&query(pairs), now).expect_err("invalid");
            assert!(error.to_string().contains(named), "{error}");
        }
    }
}
