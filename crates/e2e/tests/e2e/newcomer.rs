//! Errors a newcomer meets first say what to do: no cluster reachable, the port taken.

use std::process::{Command, Stdio};
use std::time::Duration;

use krustlet_e2e::node::free_port;

use crate::KRUSTLET;

fn kubeconfig_for(server: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

#[test]
fn an_unreachable_api_server_is_named_with_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = format!("https://127.0.0.1:{}", free_port());
    let kubeconfig = kubeconfig_for(&server, dir.path());
    // TLS bootstrap against it: one clear line, then exit.
    let output = Command::new(KRUSTLET)
        .arg("--bootstrap-kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg(format!("--port={}", free_port()))
        .arg("--node-ip=127.0.0.1")
        .output()
        .expect("run krustlet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the API server at {server}"))
            && stderr.contains("check that the control plane is running"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ERROR"),
        "no transport error noise:\n{stderr}"
    );

    // With credentials already there: it keeps retrying, saying the same clearly.
    let log = dir.path().join("log");
    let mut child = Command::new(KRUSTLET)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .arg(format!("--port={}", free_port()))
        .arg("--node-ip=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start krustlet");
    std::thread::sleep(Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(
        text.contains(&format!("cannot reach the API server at {server}")),
        "{text}"
    );
    assert!(!text.contains("ERROR"), "no transport error noise:\n{text}");
}

#[test]
fn a_taken_port_is_one_line_naming_it_and_the_flag() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(KRUSTLET)
        .arg("--kubeconfig")
        .arg(kubeconfig_for("https://127.0.0.1:1", dir.path()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg(format!("--port={port}"))
        .arg("--node-ip=127.0.0.1")
        .output()
        .expect("run krustlet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim(),
        format!(
            "krustlet: kubelet: port {port} on 127.0.0.1 is already in use (another kubelet or \
             krustlet?): stop that process or choose another port with --port"
        )
    );
}
