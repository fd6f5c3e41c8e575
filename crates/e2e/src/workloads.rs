//! Test workloads published to the loopback registry, once per test process.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use oci_client::secrets::RegistryAuth;

use crate::cluster::cluster;
use crate::registry::push_wasm;

/// Pushes `bytes` as `<registry>/e2e/<name>:v1` once per process and returns the reference.
///
/// Runs on its own thread and runtime, so any test's runtime can call it.
pub fn publish(name: &str, bytes: impl FnOnce() -> Vec<u8> + Send + 'static) -> String {
    static PUBLISHED: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let published = PUBLISHED.get_or_init(Default::default);
    let mut map = published.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reference) = map.get(name) {
        return reference.clone();
    }
    let reference = format!("{}/e2e/{name}:v1", cluster().registry);
    let target = reference.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(push_wasm(&target, bytes(), &RegistryAuth::Anonymous))
            .map(|_| ())
    })
    .join()
    .expect("push thread")
    .unwrap_or_else(|e| panic!("pushing {reference}: {e:#}"));
    map.insert(name.into(), reference.clone());
    reference
}

/// The multitool module (see `test/workloads/multitool.c`) as an image reference.
pub fn multitool() -> String {
    publish("multitool", || {
        let path = krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}"));
        std::fs::read(path).expect("read multitool")
    })
}

/// The multitool as a preview-2 component, as an image reference.
pub fn multitool_component() -> String {
    publish("multitool-component", || {
        let path = krustlet_test_workloads::multitool_component().unwrap_or_else(|e| panic!("{e}"));
        std::fs::read(path).expect("read multitool component")
    })
}

/// The http component (see `test/workloads/http.c`): a `wasi:http/proxy` component, as an
/// image reference.
pub fn http_component() -> String {
    publish("http-component", || {
        let path = krustlet_test_workloads::http_component().unwrap_or_else(|e| panic!("{e}"));
        std::fs::read(path).expect("read http component")
    })
}

/// The `wasi:sockets` component (see `test/workloads/sockets.c`): TCP/UDP echo servers and
/// clients, as an image reference.
pub fn sockets_component() -> String {
    publish("sockets-component", || {
        let path = krustlet_test_workloads::sockets_component().unwrap_or_else(|e| panic!("{e}"));
        std::fs::read(path).expect("read sockets component")
    })
}
