//! Client-side rate limiting of the node's API client: `--kube-api-qps` and `--kube-api-burst`.
//!
//! kube-rs has no rate limiter of its own, so this is client-go's token bucket
//! (`flowcontrol.NewTokenBucketRateLimiter`, which `kubernetes.NewForConfig` shares between
//! every API group of one clientset) as a tower layer: the bucket starts full with `burst`
//! tokens and refills `qps` tokens a second up to `burst`; each request takes one, and waits
//! for it when none is left. The wait happens in `poll_ready`, so a request is not sent before
//! its turn and nothing is queued here beyond what the client's own buffer holds.
//!
//! # Caveats
//! As upstream's kubelet, Krustlet heartbeats (Lease, node status) through a second client
//! without a limit ([`super::heartbeat_client`]; `heartbeatClientConfig.QPS = -1` in
//! `cmd/kubelet/app/server.go`). Upstream writes events through a third client with
//! `--event-qps`; Krustlet's events share this bucket with pod writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, Sleep};

/// client-go's `rest.DefaultQPS`: what a QPS of 0 means.
pub const DEFAULT_QPS: u32 = 5;
/// client-go's `rest.DefaultBurst`: what a burst of 0 means with a QPS of 0.
pub const DEFAULT_BURST: u32 = 10;

/// A token bucket's settings: `qps` requests a second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimit {
    /// Tokens added per second.
    pub qps: u32,
    /// Most tokens held (and the bucket's size at start).
    pub burst: u32,
}

impl RateLimit {
    /// The limit the kubelet's client gets from `kubeAPIQPS` and `kubeAPIBurst`.
    ///
    /// `cmd/kubelet/app/server.go` copies both into the client's `rest.Config`; for a QPS of 0
    /// client-go's `rest.RESTClientFor` uses its `DefaultQPS` (5) and, for a burst of 0,
    /// `DefaultBurst` (10) — despite the kubelet flag's help, which says 50. A QPS above 0 with
    /// a burst of 0 is refused by `kubernetes.NewForConfig`, and so here.
    ///
    /// # Errors
    /// A message for `--kube-api-burst` when `qps > 0` and `burst == 0`.
    pub fn from_kubelet_flags(qps: u32, burst: u32) -> Result<Self, String> {
        if qps == 0 {
            return Ok(Self {
                qps: DEFAULT_QPS,
                burst: if burst == 0 { DEFAULT_BURST } else { burst },
            });
        }
        if burst == 0 {
            return Err(format!(
                "must be at least 1 when --kube-api-qps is above 0 (it is {qps}); \
                 client-go refuses a burst of 0"
            ));
        }
        Ok(Self { qps, burst })
    }

    /// A layer whose services all take from one new bucket.
    pub fn layer(self) -> RateLimitLayer {
        RateLimitLayer {
            bucket: Arc::new(Mutex::new(Bucket::full(self, Instant::now()))),
        }
    }
}

/// The bucket: tokens now, and when they were last counted.
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    counted_at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            counted_at: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.counted_at).as_secs_f64();
        let qps = f64::from(self.limit.qps.max(1));
        self.tokens = (self.tokens + elapsed * qps).min(f64::from(self.limit.burst));
        self.counted_at = now;
        // A token that float rounding leaves a hair short of whole is whole.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / qps))
        }
    }
}

/// A tower layer limiting requests by one shared token bucket ([`RateLimit::layer`]).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            bucket: self.bucket.clone(),
            holds_token: false,
            waiting: None,
        }
    }
}

/// A service that is ready only once it holds a token of its bucket.
pub struct RateLimited<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    /// A token taken for the next call.
    holds_token: bool,
    /// The wait for the next token.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S, R> tower_service::Service<R> for RateLimited<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if self.holds_token {
                return self.inner.poll_ready(cx);
            }
            if let Some(waiting) = self.waiting.as_mut() {
                ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
            }
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now());
            match taken {
                Ok(()) => self.holds_token = true,
                Err(wait) => self.waiting = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.holds_token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    /// A service answering at once, for the layer's tests.
    struct Echo;

    impl Service<u32> for Echo {
        type Response = u32;
        type Error = Infallible;
        type Future = std::future::Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: u32) -> Self::Future {
            std::future::ready(Ok(request))
        }
    }

    async fn send(service: &mut RateLimited<Echo>, request: u32) -> u32 {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .expect("ready");
        service.call(request).await.expect("answer")
    }

    #[test]
    fn kubelet_flags_map_as_client_go_does() {
        assert_eq!(
            RateLimit::from_kubelet_flags(50, 100),
            Ok(RateLimit {
                qps: 50,
                burst: 100
            })
        );
        assert_eq!(
            RateLimit::from_kubelet_flags(0, 0),
            Ok(RateLimit { qps: 5, burst: 10 }),
            "0 is client-go's DefaultQPS and DefaultBurst"
        );
        assert_eq!(
            RateLimit::from_kubelet_flags(0, 3),
            Ok(RateLimit { qps: 5, burst: 3 })
        );
        assert!(RateLimit::from_kubelet_flags(5, 0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_at_once_then_requests_wait_their_turn() {
        let mut service = RateLimit { qps: 5, burst: 10 }.layer().layer(Echo);
        let start = Instant::now();
        for i in 0..10 {
            assert_eq!(send(&mut service, i).await, i);
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst needs no wait");
        send(&mut service, 10).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(200),
            "then 1/qps each"
        );
        for i in 0..5 {
            send(&mut service, i).await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1200));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_refills_only_up_to_burst() {
        let layer = RateLimit { qps: 10, burst: 2 }.layer();
        let mut service = layer.layer(Echo);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        send(&mut service, 0).await;
        send(&mut service, 1).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        send(&mut service, 2).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn services_of_one_layer_share_its_bucket() {
        let layer = RateLimit { qps: 1, burst: 1 }.layer();
        let (mut a, mut b) = (layer.layer(Echo), layer.layer(Echo));
        let start = Instant::now();
        send(&mut a, 0).await;
        send(&mut b, 0).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
