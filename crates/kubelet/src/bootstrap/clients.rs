//! Long-lived API streams that follow the node's current client.
//!
//! A watch opened with one client keeps that client's certificate for as long as it runs:
//! once the certificate expires every reconnect gets `401 Unauthorized`, forever. Upstream's
//! kubelet closes all connections when its certificate rotates (`pkg/kubelet/certificate/
//! transport.go`) so every watch reconnects with the new one; here each rotation publishes a
//! new client and [`follow_client`] restarts the stream with it.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::watch;

/// A boxed stream, restartable from a client.
type Boxed<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// The items of `open(client)`, reopened with each new client published on `clients`; the
/// stream of the old client is dropped first. Ends when the current stream ends.
pub fn follow_client<C, T, S>(
    mut clients: watch::Receiver<C>,
    open: impl Fn(C) -> S + Send + 'static,
) -> impl Stream<Item = T> + Send
where
    C: Clone + Send + Sync + 'static,
    T: Send + 'static,
    S: Stream<Item = T> + Send + 'static,
{
    let first: Boxed<T> = Box::pin(open(clients.borrow_and_update().clone()));
    // `publishing` turns false when the sender is gone: then only the current stream is left.
    let state = (clients, first, open, true);
    futures::stream::unfold(
        state,
        |(mut clients, mut current, open, mut publishing)| async move {
            loop {
                tokio::select! {
                    // A new client wins over a pending item of the old one.
                    biased;
                    changed = clients.changed(), if publishing => {
                        if changed.is_err() {
                            publishing = false;
                            continue;
                        }
                        let client = clients.borrow_and_update().clone();
                        // Drop the old stream (and its connection) before opening the new one.
                        drop(std::mem::replace(&mut current, Box::pin(futures::stream::empty())));
                        current = Box::pin(open(client));
                        tracing::debug!("API client changed; stream restarted with it");
                    }
                    item = current.next() => {
                        return item.map(|item| (item, (clients, current, open, publishing)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Counts live streams: incremented when opened, decremented when dropped.
    struct Live(Arc<AtomicUsize>);

    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A stream yielding `client` every 10 ms, as a watch of that client would yield events.
    fn ticking(client: u32, live: Arc<AtomicUsize>) -> impl Stream<Item = u32> + Send {
        live.fetch_add(1, Ordering::SeqCst);
        let guard = Live(live);
        futures::stream::unfold(guard, move |guard| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((client, guard))
        })
    }

    #[tokio::test]
    async fn a_new_client_restarts_the_stream_and_drops_the_old_one() {
        let (tx, rx) = watch::channel(1u32);
        let live = Arc::new(AtomicUsize::new(0));
        let opened = live.clone();
        let mut stream = Box::pin(follow_client(rx, move |c| ticking(c, opened.clone())));
        assert_eq!(stream.next().await, Some(1));
        assert_eq!(stream.next().await, Some(1));
        assert_eq!(live.load(Ordering::SeqCst), 1);
        // The certificate rotates: everything after comes from the new client's stream.
        tx.send_replace(2);
        assert_eq!(stream.next().await, Some(2));
        assert_eq!(live.load(Ordering::SeqCst), 1, "the old stream was dropped");
        tx.send_replace(3);
        tx.send_replace(4);
        assert_eq!(
            stream.next().await,
            Some(4),
            "only the newest client counts"
        );
        assert_eq!(live.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_client_change_interrupts_a_stream_that_waits() {
        let (tx, rx) = watch::channel(1u32);
        let live = Arc::new(AtomicUsize::new(0));
        let opened = live.clone();
        // Client 1's stream never yields: a watch stuck retrying with an expired certificate.
        let mut stream = Box::pin(follow_client(rx, move |c| {
            let live = opened.clone();
            let waits = c == 1;
            ticking(c, live).filter(move |_| std::future::ready(!waits))
        }));
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.send_replace(2);
            tx
        });
        let started = tokio::time::Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        assert_eq!(next.expect("the new client's stream yields"), Some(2));
        assert!(started.elapsed() >= Duration::from_millis(300));
        // The sender going away leaves the current stream running.
        drop(sender.await.expect("sender"));
        assert_eq!(stream.next().await, Some(2));
    }
}
