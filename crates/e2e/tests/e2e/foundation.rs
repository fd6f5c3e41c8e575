//! The foundation: the real control plane, kubectl and registries answer.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use krustlet_e2e::{TestNamespace, cluster, kubectl, registry};
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

#[tokio::test]
async fn api_server_creates_namespace_configmap_and_pod() {
    let ns = TestNamespace::new("api").await.expect("namespace");
    let cm: ConfigMap = from_json(serde_json::json!({
        "metadata": {"name": "settings"}, "data": {"greeting": "hello"}
    }));
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let read = ns
        .api::<ConfigMap>()
        .get("settings")
        .await
        .expect("get configmap");
    assert_eq!(
        read.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hello")
    );

    let pod: Pod = from_json(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": {"containers": [{"name": "hello", "image": "example.com/hello:v1"}]}
    }));
    let created = ns
        .api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    assert!(created.metadata.uid.is_some());
    // The ServiceAccount admission plugin ran: the token volume was injected.
    let volumes = created.spec.and_then(|s| s.volumes).unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v.name.starts_with("kube-api-access-")),
        "ServiceAccount admission did not inject kube-api-access: {volumes:?}"
    );
}

#[tokio::test]
async fn deployment_pods_stay_pending_unschedulable() {
    let ns = TestNamespace::new("deploy").await.expect("namespace");
    // A selector no node matches keeps this true however many nodes other tests start.
    let deployment: Deployment = from_json(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"krustlet.test/no-such-node": "true"},
                    "containers": [{"name": "web", "image": "example.com/web:v1"}]
                }
            }
        }
    }));
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create");

    // The controller-manager makes a ReplicaSet and its Pods; the scheduler finds no node.
    let events = ns.api::<Event>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut stream = watcher(events, watcher::Config::default()).boxed();
    let mut seen = None;
    while seen.is_none() {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some(item)) = next else { break };
        if let Ok(watcher::Event::Apply(event) | watcher::Event::InitApply(event)) = item
            && event.reason.as_deref() == Some("FailedScheduling")
        {
            seen = event.message;
        }
    }
    let message = seen.expect("a FailedScheduling event within 120 s");
    assert!(
        message.contains("node"),
        "unexpected FailedScheduling message: {message}"
    );

    // The ReplicaSet controller may create the second replica after the first one's event.
    let mut tries = 0;
    let pods = loop {
        let pods = ns
            .api::<Pod>()
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("list");
        tries += 1;
        if pods.items.len() >= 2 || tries == 60 {
            break pods;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(pods.items.len(), 2, "the ReplicaSet made both replicas");
    for pod in pods.items {
        let status = pod.status.unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let scheduled = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        if let Some(condition) = scheduled {
            assert_eq!(condition.status, "False");
            assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
        }
    }
}

#[tokio::test]
async fn kubectl_of_the_same_release_talks_to_the_cluster() {
    let ns = TestNamespace::new("kubectl").await.expect("namespace");
    let out = kubectl(&["get", "ns", "-o", "name"]).expect("kubectl get ns");
    assert!(
        out.lines().any(|l| l == format!("namespace/{}", ns.name())),
        "{out}"
    );

    let version: serde_json::Value =
        serde_json::from_str(&kubectl(&["version", "-o", "json"]).expect("kubectl version"))
            .expect("json");
    let client = version["clientVersion"]["gitVersion"]
        .as_str()
        .expect("client version");
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .expect("server version");
    assert_eq!(
        client, server,
        "kubectl and the API server come from one release"
    );
    assert!(server.starts_with("v1.3"), "{server}");
}

#[tokio::test]
async fn wasm_pushed_to_the_registry_reads_back_by_digest() {
    let wasm =
        std::fs::read(krustlet_test_workloads::multitool().unwrap_or_else(|e| panic!("{e}")))
            .expect("read multitool");
    let info = cluster();
    let reference = format!("{}/foundation/multitool:v1", info.registry);
    let digest = registry::push_wasm(&reference, wasm.clone(), &RegistryAuth::Anonymous)
        .await
        .expect("push");
    assert!(digest.starts_with("sha256:"), "{digest}");

    let by_digest: Reference = format!("{}/foundation/multitool@{digest}", info.registry)
        .parse()
        .expect("reference");
    let client = registry::client();
    let image = client
        .pull(
            &by_digest,
            &RegistryAuth::Anonymous,
            vec![registry::WASM_LAYER_MEDIA_TYPE],
        )
        .await
        .expect("pull by digest");
    assert_eq!(image.layers.len(), 1);
    assert_eq!(
        image.layers[0].data.as_ref(),
        wasm.as_slice(),
        "the module reads back byte for byte"
    );
    assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
}

#[tokio::test]
async fn authenticated_registry_requires_credentials() {
    let info = cluster();
    let reference = format!("{}/private/multitool:v1", info.auth_registry);
    let anonymous = registry::push_wasm(
        &reference,
        b"\0asm\x01\0\0\0".to_vec(),
        &RegistryAuth::Anonymous,
    )
    .await;
    assert!(
        anonymous.is_err(),
        "anonymous push to the htpasswd registry must fail"
    );
    let auth = RegistryAuth::Basic(
        info.auth_registry_user.clone(),
        info.auth_registry_password.clone(),
    );
    let digest = registry::push_wasm(&reference, b"\0asm\x01\0\0\0".to_vec(), &auth)
        .await
        .expect("push with credentials");
    assert!(digest.starts_with("sha256:"));
}
