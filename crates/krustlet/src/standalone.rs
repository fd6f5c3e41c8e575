//! `krustlet pods` and `krustlet logs`: what a standalone Krustlet runs, read from its data
//! dir (the status files it writes and the CRI log files), so they work from another process.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kubelet::log::reader::{LogOptions, find_run, stream_log};
use tokio::io::AsyncWriteExt;

/// The static pods recorded under `data_dir`, oldest first.
fn read_pods(data_dir: &Path) -> anyhow::Result<Vec<Pod>> {
    let dir = kubelet::standalone::status_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no static pods under {}: is `krustlet standalone --data-dir {}` running?",
            dir.display(),
            data_dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut pods: Vec<Pod> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        // A file removed or half-replaced meanwhile is skipped, not an error.
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    pods.sort_by_key(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref().map(|t| t.0))
    });
    Ok(pods)
}

fn container_state(s: &ContainerStatus) -> String {
    let state = s.state.clone().unwrap_or_default();
    let detail = if state.running.is_some() {
        "Running".to_string()
    } else if let Some(t) = state.terminated {
        format!(
            "Terminated({})",
            t.reason.unwrap_or_else(|| t.exit_code.to_string())
        )
    } else if let Some(w) = state.waiting {
        format!("Waiting({})", w.reason.unwrap_or_default())
    } else {
        "Unknown".into()
    };
    format!("{}={detail}", s.name)
}

fn age(pod: &Pod) -> String {
    let Some(start) = pod.status.as_ref().and_then(|s| s.start_time.as_ref()) else {
        return "-".into();
    };
    let seconds = (jiff::Timestamp::now().as_second() - start.0.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `krustlet pods`: a table of the static pods.
pub fn pods(data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir = data_dir.unwrap_or_else(kubelet::config::default_data_dir);
    let rows: Vec<[String; 6]> = read_pods(&data_dir)?
        .iter()
        .map(|pod| {
            let status = pod.status.clone().unwrap_or_default();
            let containers: Vec<ContainerStatus> = status
                .init_container_statuses
                .into_iter()
                .flatten()
                .chain(status.container_statuses.into_iter().flatten())
                .collect();
            let restarts: i32 = containers.iter().map(|c| c.restart_count).sum();
            [
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
                status.phase.unwrap_or_default(),
                restarts.to_string(),
                age(pod),
                containers
                    .iter()
                    .map(container_state)
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    let header = [
        "NAMESPACE",
        "NAME",
        "PHASE",
        "RESTARTS",
        "AGE",
        "CONTAINERS",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
    Ok(())
}

/// `krustlet logs`: a container's log, as `kubectl logs` prints it.
pub async fn logs(
    pod: &str,
    container: Option<String>,
    namespace: &str,
    follow: bool,
    previous: bool,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let data_dir = data_dir.unwrap_or_else(kubelet::config::default_data_dir);
    let container = match container {
        Some(c) => c,
        None => only_container(&data_dir, namespace, pod)?,
    };
    let run = find_run(
        &kubelet::log::pods_log_root(&data_dir),
        namespace,
        pod,
        &container,
        previous,
    )?;
    let options = LogOptions {
        follow,
        previous,
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(stream_log(run, options, tx));
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = rx.recv().await {
        stdout.write_all(&chunk).await?;
        stdout.flush().await?;
    }
    reader.await??;
    Ok(())
}

/// The one container of `pod`, by its status file; several is an error naming them.
fn only_container(data_dir: &Path, namespace: &str, pod: &str) -> anyhow::Result<String> {
    let found = read_pods(data_dir)?.into_iter().find(|p| {
        p.metadata.name.as_deref() == Some(pod)
            && p.metadata.namespace.as_deref() == Some(namespace)
    });
    let Some(found) = found else {
        anyhow::bail!("no static pod {namespace}/{pod} (see `krustlet pods`)");
    };
    let status = found.status.unwrap_or_default();
    let names: Vec<String> = status
        .container_statuses
        .into_iter()
        .flatten()
        .map(|c| c.name)
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("pod {pod} has no container that started yet"),
        many => anyhow::bail!(
            "pod {pod} has several containers; choose one with -c: {}",
            many.join(", ")
        ),
    }
}
