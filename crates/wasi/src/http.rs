//! Serving HTTP components: a component that exports `wasi:http/incoming-handler` (and not
//! `wasi:cli/run`) is served on the listeners the kubelet opened for its `containerPort`s.
//!
//! Modelled on `wasmtime serve` (wasmtime's `src/commands/serve.rs`) and the
//! `wasmtime_wasi_http::p2` embedding example: one [`Linker`] per engine with all of WASI 0.2
//! plus `wasi:http` (as `wasmtime serve -Scli`, so a handler reads its environment and its
//! volumes), one [`ProxyPre`] per run, and one fresh instance per request, which runs on its
//! own task so a response body can stream after its head. HTTP/1.1 with keep-alive, one
//! connection task each, as `wasmtime serve`. Instances come from the pooling allocator of
//! the serving engine ([`crate::WasmEngine::serving`]), again as `wasmtime serve`.
//!
//! # Limits
//! - The pod's memory limit holds across all the run's instances together (each counts its
//!   memories, tables and host overhead into the run's [`Usage`]; an instance that would pass
//!   it traps, and its request gets a 500); its CPU limit likewise (one token bucket for all).
//! - [`HttpLimits`]: a request body over `max_request_body_bytes` is answered 413 (declared by
//!   `Content-Length`) or ends with an error for the guest (chunked); a request that takes
//!   longer than `request_timeout` has its instance stopped (a 504 if no response was
//!   started); at most `max_concurrent_requests` run at once, the rest wait.
//!
//! # Network
//! Each instance gets the container's network as a command component does: `wasi:sockets`
//! made inside the pod's namespace under its outbound grants, name lookups with the pod's DNS,
//! and outgoing requests (`wasi:http/outgoing-handler`) through [`crate::outgoing`] under the
//! same grants. Without a network every outgoing request is `HTTP-request-denied`.
//!
//! # Stopping
//! A graceful stop is a drain: the listeners close at once, idle keep-alive connections are
//! closed, in-flight requests finish, and the run ends as soon as the last one has (an idle
//! server stops in milliseconds). A kill drops everything at once.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use kubelet::log::writer::{CriLogWriter, Stream};
use kubelet::network::netns::{InNamespace, NetNs};
use kubelet::network::outbound::GuestNetwork;
use kubelet::network::{MAX_REQUEST_BODY_ANNOTATION, REQUEST_TIMEOUT_ANNOTATION};
use kubelet::runtime::{HttpLimits, Usage};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::{Error as WasiHttpError, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::cpu::{self, CpuClock, Throttle};
use crate::log::CriStream;
use crate::memory::{MemoryLimiter, is_memory_limit};
use crate::name_lookup::{self, HasNameLookups, NameLookups};
use crate::outgoing::{self, Outgoing};
use crate::run::{Mount, RunError, grant_sockets, guest_sockets, preopen};

/// Connections held open at once per run (`wasmtime serve`'s default).
const MAX_CONNECTIONS: usize = 1000;

/// The export that makes a component an HTTP component.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler";

/// Whether `component` exports `wasi:http/incoming-handler` (at any 0.2 version).
pub fn is_http_component(component: &Component) -> bool {
    component
        .component_type()
        .exports(component.engine())
        .any(|(name, _)| name.starts_with(INCOMING_HANDLER))
}

/// Store state of one request's instance.
pub struct HttpState {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: Outgoing,
    limiter: MemoryLimiter,
    lookups: Option<NameLookups>,
}

impl HasNameLookups for HttpState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn lookups(&self) -> Option<&NameLookups> {
        self.lookups.as_ref()
    }
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The linker for HTTP components: all of WASI 0.2 plus `wasi:http`, name lookups with the
/// pod's DNS (made once per engine).
///
/// # Errors
/// wasmtime's, if the interfaces clash (a bug).
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HttpState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    name_lookup::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Pre-instantiates `component` for serving.
///
/// # Errors
/// When it imports what the linker lacks or does not export the proxy world's handler.
pub fn prepare(
    linker: &Linker<HttpState>,
    component: &Component,
) -> wasmtime::Result<ProxyPre<HttpState>> {
    ProxyPre::new(linker.instantiate_pre(component)?)
}

/// What every request's instance gets: the container's argv, env, mounts and log.
pub struct Template {
    /// argv.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub mounts: Vec<Mount>,
    /// Where stdout and stderr go.
    pub log: CriLogWriter,
    /// The container's network (sockets, lookups and outgoing requests); `None`: none.
    pub network: Option<GuestNetwork>,
}

/// What every instance's network is made of, set up once per run.
struct Network {
    guest: GuestNetwork,
    namespace: Option<Arc<NetNs>>,
    lookups: Option<NameLookups>,
    outgoing: Outgoing,
}

/// One container run of an HTTP component.
pub struct Server {
    pre: ProxyPre<HttpState>,
    template: Template,
    network: Option<Network>,
    usage: Arc<Usage>,
    limits: HttpLimits,
    /// One CPU token bucket for all instances.
    throttle: Arc<Mutex<Throttle>>,
    requests: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    killed: CancellationToken,
}

/// Why a request's instance ended early.
enum Failure {
    Guest(wasmtime::Error),
    Timeout,
    Killed,
}

fn plain(status: StatusCode, text: String) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(text + "\n"))
        .map_err(|never: Infallible| -> WasiHttpError { match never {} })
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl Server {
    /// A server of `pre` for one container run; `usage` holds its limits and counts its
    /// instances' memory and CPU.
    ///
    /// # Errors
    /// [`RunError::Network`] when the pod's network namespace cannot be opened.
    pub fn new(
        pre: ProxyPre<HttpState>,
        template: Template,
        usage: Arc<Usage>,
        limits: HttpLimits,
    ) -> Result<Self, RunError> {
        let network = match &template.network {
            Some(guest) => {
                let (namespace, lookups) = guest_sockets(guest)?;
                let outgoing = Outgoing::new(
                    guest.clone(),
                    namespace.clone(),
                    lookups.as_ref().map(|l| l.resolver.clone()),
                    outgoing::node_tls(),
                );
                Some(Network {
                    guest: guest.clone(),
                    namespace,
                    lookups,
                    outgoing,
                })
            }
            None => None,
        };
        let throttle = Throttle::new(CpuClock::new(usage.clone()));
        Ok(Self {
            pre,
            template,
            network,
            usage,
            limits,
            throttle: Arc::new(Mutex::new(throttle)),
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            killed: CancellationToken::new(),
        })
    }

    /// Serves `listeners` until `stop` (a drain) and the last request is done. Dropping the
    /// future stops every instance at its next epoch.
    pub async fn serve(
        self,
        listeners: Vec<(u16, std::net::TcpListener)>,
        stop: oneshot::Receiver<()>,
    ) {
        let server = Arc::new(self);
        let _kill_on_drop = server.killed.clone().drop_guard();
        let draining = CancellationToken::new();
        // Every connection and instance holds a sender: all are done when `recv` sees none.
        let (in_flight, mut done) = mpsc::channel::<()>(1);
        let mut accepting = Vec::new();
        for (port, listener) in listeners {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    server.log_line(&format!("cannot serve port {port}: {error}"));
                    continue;
                }
            };
            tracing::info!(port, "serving the HTTP component");
            let (server, draining, in_flight) =
                (server.clone(), draining.clone(), in_flight.clone());
            accepting.push(tokio::spawn(accept(server, listener, draining, in_flight)));
        }
        drop(in_flight);
        // A dropped stop sender (the runner went) is a stop too.
        let _ = stop.await;
        // Drain: close the listeners at once, then wait for the connections and instances.
        for task in &accepting {
            task.abort();
        }
        for task in accepting {
            let _ = task.await;
        }
        draining.cancel();
        let _ = done.recv().await;
    }

    /// Writes a line about the server to the container's stderr log.
    fn log_line(&self, text: &str) {
        let _ = self
            .template
            .log
            .write(Stream::Stderr, format!("krustlet: {text}\n").as_bytes());
    }

    /// A store for one request's instance, or the response that refuses it.
    fn store(&self) -> Result<Store<HttpState>, Box<hyper::Response<HyperOutgoingBody>>> {
        let limiter = MemoryLimiter::shared(self.usage.clone()).map_err(|exceeded| {
            Box::new(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no memory for another instance: {exceeded}"),
            ))
        })?;
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(&self.template.args)
            .envs(&self.template.env)
            .stdout(CriStream::new(self.template.log.clone(), Stream::Stdout))
            .stderr(CriStream::new(self.template.log.clone(), Stream::Stderr));
        preopen(&mut builder, &self.template.mounts).map_err(|error| {
            self.log_line(&error.to_string());
            Box::new(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".into(),
            ))
        })?;
        if let Some(network) = &self.network {
            grant_sockets(&mut builder, network.guest.clone());
        }
        let state = HttpState {
            ctx: builder.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: self
                .network
                .as_ref()
                .map(|n| n.outgoing.clone())
                .unwrap_or_default(),
            limiter,
            lookups: self.network.as_ref().and_then(|n| n.lookups.clone()),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        let throttle = self.throttle.clone();
        store.epoch_deadline_callback(move |_| {
            Ok(throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .on_epoch())
        });
        Ok(store)
    }

    /// Handles one request on a fresh instance.
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<hyper::body::Incoming>,
        in_flight: mpsc::Sender<()>,
    ) -> hyper::Response<HyperOutgoingBody> {
        let Ok(permit) = self.requests.clone().acquire_owned().await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "stopping".into());
        };
        let max = self.limits.max_request_body_bytes;
        if content_length(request.headers()).is_some_and(|n| n > max) {
            let mut refused = plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over {max} bytes, this pod's limit (annotation \
                     {MAX_REQUEST_BODY_ANNOTATION})"
                ),
            );
            // The body is left unread, so the connection cannot carry another request: say so
            // (RFC 9112 section 9.6), or a client reuses it and its next request breaks.
            refused.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return refused;
        }
        let what = format!("{} {}", request.method(), request.uri().path());
        let request = request.map(move |body| {
            Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).map_err(move |error| {
                match error.downcast::<hyper::Error>() {
                    Ok(error) => WasiHttpError::Hyper(*error),
                    Err(_) => WasiHttpError::HttpRequestBodySize(Some(max)),
                }
            })
        });
        let mut store = match self.store() {
            Ok(store) => store,
            Err(refusal) => return *refusal,
        };
        let (sender, receiver) = oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request);
        let out = store.data_mut().http().new_response_outparam(sender);
        let (Ok(incoming), Ok(out)) = (incoming, out) else {
            return plain(
                StatusCode::BAD_REQUEST,
                "a request needs a Host header".into(),
            );
        };
        let timeout = self.limits.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (pre, clock, killed) = (
            self.pre.clone(),
            CpuClock::new(self.usage.clone()),
            self.killed.clone(),
        );
        let server = self.clone();
        let namespace = self.network.as_ref().and_then(|n| n.namespace.clone());
        let task = tokio::spawn(async move {
            let _held = (in_flight, permit);
            let run = cpu::metered(clock, run_instance(pre, store, incoming, out));
            // The instance's sockets are made on the thread that polls it: poll it inside the
            // pod's namespace, as a command component's run.
            let run = async move {
                match namespace {
                    Some(namespace) => InNamespace::new(namespace, run).await.unwrap_or_else(|e| {
                        Err(wasmtime::Error::msg(format!(
                            "cannot enter the pod's network namespace: {e}"
                        )))
                    }),
                    None => run.await,
                }
            };
            let result = tokio::select! {
                result = run => result.map_err(Failure::Guest),
                _ = tokio::time::sleep_until(deadline) => Err(Failure::Timeout),
                _ = killed.cancelled() => Err(Failure::Killed),
            };
            match &result {
                Err(Failure::Guest(error)) if is_pool_exhausted(error) => {
                    server.log_line(&format!("{what}: refused 503: {error:#}"))
                }
                Err(Failure::Guest(error)) if is_memory_limit(error) => server.log_line(&format!(
                    "{what}: the instance needed more memory than the pod's limit: \
                     {error:#}"
                )),
                Err(Failure::Guest(error)) => {
                    server.log_line(&format!("{what}: the handler trapped: {error:?}"))
                }
                Err(Failure::Timeout) => server.log_line(&format!(
                    "{what}: stopped after {}s, the pod's request time limit (annotation \
                     {REQUEST_TIMEOUT_ANNOTATION})",
                    timeout.as_secs_f64()
                )),
                _ => {}
            }
            result
        });
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(code))) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the handler failed: {code:?}"),
            ),
            // The guest ended without a response; the task said why in the log.
            Ok(Err(_)) => match task.await {
                Ok(Err(Failure::Guest(error))) if is_pool_exhausted(&error) => plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "every instance slot of this node's HTTP components is in use; retry later"
                        .into(),
                ),
                Ok(Err(Failure::Timeout)) => plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the handler did not answer within {}s",
                        timeout.as_secs_f64()
                    ),
                ),
                Ok(Ok(())) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the handler returned without a response".into(),
                ),
                _ => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the handler failed (see the container log)".into(),
                ),
            },
            Err(_) => plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the handler did not answer within {}s",
                    timeout.as_secs_f64()
                ),
            ),
        }
    }
}

/// Whether instantiating failed because the pooling allocator had no free slot (too many
/// requests at once across the node's HTTP pods): the request is answered 503, not 500.
fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
}

/// Instantiates `pre` in `store` and calls its handler with `incoming` and `out`.
async fn run_instance(
    pre: ProxyPre<HttpState>,
    mut store: Store<HttpState>,
    incoming: Resource<HostIncomingRequest>,
    out: Resource<HostResponseOutparam>,
) -> wasmtime::Result<()> {
    let proxy = pre.instantiate_async(&mut store).await?;
    proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut store, incoming, out)
        .await
}

/// Accepts connections on `listener` until aborted (dropping the listener closes it).
async fn accept(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    draining: CancellationToken,
    in_flight: mpsc::Sender<()>,
) {
    loop {
        let Ok(permit) = server.connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors or a reset before accept: wait a little, go on.
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (server, draining, in_flight) = (server.clone(), draining.clone(), in_flight.clone());
        tokio::spawn(async move {
            let _permit = permit;
            connection(server, stream, draining, in_flight).await;
        });
    }
}

/// Serves one connection's requests; on drain, finishes the request in progress and closes.
async fn connection(
    server: Arc<Server>,
    stream: tokio::net::TcpStream,
    draining: CancellationToken,
    in_flight: mpsc::Sender<()>,
) {
    // Small response chunks should not wait for Nagle (as `wasmtime serve`).
    let _ = stream.set_nodelay(true);
    let killed = server.killed.clone();
    let service_server = server.clone();
    let service_in_flight = in_flight.clone();
    let service = hyper::service::service_fn(move |request| {
        let (server, in_flight) = (service_server.clone(), service_in_flight.clone());
        async move { Ok::<_, Infallible>(server.handle(request, in_flight).await) }
    });
    // HTTP/1.1, and HTTP/2 with prior knowledge (h2c: gRPC clients, grpc probes).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = killed.cancelled() => return,
        _ = draining.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = killed.cancelled() => {}
    }
    drop(in_flight);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use kubelet::runtime::Limits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::cache::{CacheLimits, CompileCache};
    use crate::engine::WasmEngine;
    use crate::module::{Code, Program};

    /// Sends a raw HTTP/1.1 request (with `Connection: close`) and reads the whole answer.
    async fn send(addr: SocketAddr, head: &str, body: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{head} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.expect("read");
        dechunk(&String::from_utf8_lossy(&out))
    }

    /// The response with a chunked body joined (the guest's responses have no length).
    fn dechunk(response: &str) -> String {
        let Some((head, mut rest)) = response.split_once("\r\n\r\n") else {
            return response.to_owned();
        };
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return response.to_owned();
        }
        let mut body = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        format!("{head}\r\n\r\n{body}")
    }

    struct Serving {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
        _logs: tempfile::TempDir,
    }

    fn serve(usage: Arc<Usage>, limits: HttpLimits) -> Serving {
        serve_on(usage, limits, None)
    }

    fn http_wasm() -> Vec<u8> {
        let path = krustlet_test_workloads::http_component().unwrap_or_else(|e| panic!("{e}"));
        std::fs::read(path).expect("read")
    }

    fn serve_on(usage: Arc<Usage>, limits: HttpLimits, network: Option<GuestNetwork>) -> Serving {
        let engine = WasmEngine::new().expect("engine");
        let Code::Component(component) = Program::compile(&engine, &http_wasm())
            .expect("compile")
            .code()
            .clone()
        else {
            panic!("the http workload is not a component");
        };
        assert!(is_http_component(&component));
        assert!(
            !wasmtime::Engine::same(engine.serving(), engine.engine()),
            "the pooling engine is made here"
        );
        let cache = CompileCache::new(engine.clone(), None, CacheLimits::default());
        let component = cache.for_serving("sha256:0", &component).expect("moved");
        let linker = linker(engine.serving()).expect("linker");
        serve_pre(
            prepare(&linker, &component).expect("pre-instantiate"),
            usage,
            limits,
            network,
        )
    }

    fn serve_pre(
        pre: ProxyPre<HttpState>,
        usage: Arc<Usage>,
        limits: HttpLimits,
        network: Option<GuestNetwork>,
    ) -> Serving {
        let logs = tempfile::tempdir().expect("tempdir");
        let log = CriLogWriter::create(&logs.path().join("0.log")).expect("log");
        let template = Template {
            args: vec!["http".into()],
            env: vec![("POD_NAME".into(), "unit".into())],
            mounts: vec![],
            log,
            network,
        };
        let server = Server::new(pre, template, usage, limits).expect("server");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.serve(vec![(addr.port(), listener)], stopped));
        Serving {
            addr,
            stop,
            task,
            _logs: logs,
        }
    }

    #[tokio::test]
    async fn a_request_that_finds_every_pool_slot_taken_is_answered_503() {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(1);
        let mut config = crate::engine::config();
        config.allocation_strategy(pool);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let component = Component::new(&engine, http_wasm()).expect("compile");
        let linker = linker(&engine).expect("linker");
        let pre = prepare(&linker, &component).expect("pre-instantiate");
        let serving = serve_pre(pre, Arc::default(), HttpLimits::default(), None);
        let addr = serving.addr;
        let slow = tokio::spawn(async move { send(addr, "GET /sleep?ms=1500", "").await });
        let mut refused = String::new();
        for _ in 0..100 {
            refused = send(addr, "GET /", "").await;
            if refused.starts_with("HTTP/1.1 503") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("every instance slot"), "{refused}");
        let slept = slow.await.expect("slow request");
        assert!(slept.starts_with("HTTP/1.1 200"), "{slept}");
        let again = send(addr, "GET /", "").await;
        assert!(
            again.starts_with("HTTP/1.1 200"),
            "the slot is free again: {again}"
        );
    }

    #[tokio::test]
    async fn serves_an_instance_per_request_and_drains_on_stop() {
        let serving = serve(Arc::default(), HttpLimits::default());
        let addr = serving.addr;
        let hello = send(addr, "GET /", "").await;
        assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
        assert!(hello.ends_with("hello from unit\n"), "{hello}");
        let echo = send(addr, "POST /echo", "some body").await;
        assert!(echo.ends_with("\r\n\r\nsome body"), "{echo}");
        let trap = send(addr, "GET /trap", "").await;
        assert!(trap.starts_with("HTTP/1.1 500"), "{trap}");
        let again = send(addr, "GET /", "").await;
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        // A request in flight when the stop comes finishes; then the server ends.
        let slow = tokio::spawn(send(addr, "GET /sleep?ms=800", ""));
        tokio::time::sleep(Duration::from_millis(300)).await;
        serving.stop.send(()).expect("stop");
        let slow = slow.await.expect("slow request");
        assert!(slow.ends_with("slept 800 ms\n"), "{slow}");
        tokio::time::timeout(Duration::from_secs(10), serving.task)
            .await
            .expect("drained")
            .expect("server task");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }

    #[tokio::test]
    async fn outgoing_requests_need_a_network_and_a_grant() {
        // No network: every outgoing request is denied.
        let isolated = serve(Arc::default(), HttpLimits::default());
        let denied = send(isolated.addr, "GET /fetch?url=http://127.0.0.1:9/", "").await;
        assert!(denied.starts_with("HTTP/1.1 502"), "{denied}");
        assert!(
            denied.ends_with("fetch failed: HTTP-request-denied\n"),
            "{denied}"
        );
        // On the node's network with a grant for everything, the node's loopback is still
        // refused, and the pod is told once per destination.
        let reported = Arc::new(Mutex::new(Vec::new()));
        let sink = reported.clone();
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(
            kubelet::network::outbound::GRANTS_ANNOTATION.to_string(),
            "*".to_string(),
        );
        let policy =
            kubelet::network::outbound::OutboundPolicy::for_pod(Some(&annotations), &[], false)
                .expect("policy");
        let network = GuestNetwork::new(
            None,
            policy,
            kubelet::network::outbound::DenialReporter::new(move |message| {
                sink.lock().expect("sink").push(message)
            }),
            None,
        );
        let node = serve_on(Arc::default(), HttpLimits::default(), Some(network));
        for _ in 0..2 {
            let denied = send(node.addr, "GET /fetch?url=http://127.0.0.1:9/", "").await;
            assert!(
                denied.ends_with("fetch failed: HTTP-request-denied\n"),
                "{denied}"
            );
        }
        let reported = reported.lock().expect("reported").clone();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(reported[0].contains("127.0.0.1:9"), "{reported:?}");
        // A name without the pod's DNS cannot be looked up.
        let unnamed = send(node.addr, "GET /fetch?url=http://example.invalid/", "").await;
        assert!(unnamed.ends_with("fetch failed: DNS-error\n"), "{unnamed}");
    }

    #[tokio::test]
    async fn an_idle_server_stops_at_once() {
        let serving = serve(Arc::default(), HttpLimits::default());
        let hello = send(serving.addr, "GET /", "").await;
        assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
        let started = Instant::now();
        serving.stop.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), serving.task)
            .await
            .expect("stopped")
            .expect("server task");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn limits_hold_across_instances() {
        // A body over the limit is refused before any instance runs.
        let small = serve(
            Arc::default(),
            HttpLimits {
                max_request_body_bytes: 4,
                ..HttpLimits::default()
            },
        );
        let big = send(small.addr, "POST /echo", "too big").await;
        assert!(big.starts_with("HTTP/1.1 413"), "{big}");
        // The pod's memory limit: an instance that would pass it traps (500), and the memory
        // comes back when the instance is gone.
        let usage = Arc::new(Usage::default());
        usage.limits.set(Limits {
            memory_bytes: Some(24 << 20),
            ..Limits::default()
        });
        let limited = serve(usage.clone(), HttpLimits::default());
        let hog = send(limited.addr, "GET /alloc?mb=64", "").await;
        assert!(hog.starts_with("HTTP/1.1 500"), "{hog}");
        let fine = send(limited.addr, "GET /alloc?mb=2", "").await;
        assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while usage.memory_bytes() != 0 {
            assert!(
                Instant::now() < deadline,
                "instances kept {} bytes",
                usage.memory_bytes()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // No room even for one instance's host overhead: 503.
        usage.limits.set(Limits {
            memory_bytes: Some(512 << 10),
            ..Limits::default()
        });
        let none = send(limited.addr, "GET /", "").await;
        assert!(none.starts_with("HTTP/1.1 503"), "{none}");
    }
}
