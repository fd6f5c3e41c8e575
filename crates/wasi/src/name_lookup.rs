//! `wasi:sockets/ip-name-lookup` with the pod's DNS: the linker's definition from
//! wasmtime-wasi (which asks the node's resolver, `getaddrinfo`) is shadowed by one that
//! follows the pod's `dnsPolicy`/`dnsConfig` ([`kubelet::network::resolver`]), queries from
//! inside the pod's network namespace, and tells the pod's outbound grants which names the
//! guest resolved (so a grant may name a host).
//!
//! The interface is defined by hand, as wasmtime-wasi's bindings would: a
//! `resolve-address-stream` resource of our own ([`Lookup`]), `resolve-addresses`, and its
//! `resolve-next-address` and `subscribe` methods; errors are the interface's `error-code`s.

use std::future::Future;
use std::net::IpAddr;
use std::task::{Context, Poll};

use kubelet::network::outbound::GuestNetwork;
use kubelet::network::resolver::{LookupError, Resolved, Resolver};
use wasmtime::component::{Linker, Resource, ResourceTable, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};
use wasmtime_wasi::runtime::AbortOnDropJoinHandle;

/// The interface this shadows, at wasmtime-wasi 48's version (guests of older 0.2 versions
/// link to it too).
pub const INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// A guest's name lookups: its resolver and its network (for grants by name).
#[derive(Clone)]
pub struct NameLookups {
    /// Follows the pod's DNS from inside its namespace.
    pub resolver: Resolver,
    /// Told what resolved; its DNS notes are published at the first lookup.
    pub guest: GuestNetwork,
}

/// A lookup in flight or done: the guest's `resolve-address-stream`.
pub struct Lookup {
    state: State,
}

enum State {
    Pending(AbortOnDropJoinHandle<Result<Vec<IpAddr>, ErrorCode>>),
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl Lookup {
    /// Starts resolving `name` on its own task (dropped with the stream).
    fn start(lookups: &NameLookups, name: String) -> Self {
        if let Some(dns) = &lookups.guest.dns {
            dns.used();
        }
        let resolver = lookups.resolver.clone();
        let guest = lookups.guest.clone();
        let task = wasmtime_wasi::runtime::spawn(async move {
            match resolver.lookup(&name).await {
                Ok(Resolved {
                    name: found,
                    addresses,
                }) => {
                    guest.resolved(&[name.as_str(), found.as_str()], &addresses);
                    Ok(addresses)
                }
                Err(error) => {
                    tracing::debug!(%error, "a guest's name lookup failed");
                    Err(match error {
                        LookupError::InvalidName(_) => ErrorCode::InvalidArgument,
                        LookupError::NameUnresolvable(_) => ErrorCode::NameUnresolvable,
                        LookupError::TemporaryFailure { .. } => ErrorCode::TemporaryResolverFailure,
                    })
                }
            }
        });
        Self {
            state: State::Pending(task),
        }
    }

    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Pending(task) = &mut self.state {
            let Poll::Ready(joined) = std::pin::Pin::new(task).poll(cx) else {
                return Poll::Pending;
            };
            self.state = State::Done(joined.map(Vec::into_iter));
        }
        Poll::Ready(())
    }

    /// The next address, `would-block` while resolving, `None` once all were given.
    fn next(&mut self) -> Result<Option<IpAddress>, ErrorCode> {
        let waker = std::task::Waker::noop();
        if self.poll_done(&mut Context::from_waker(waker)).is_pending() {
            return Err(ErrorCode::WouldBlock);
        }
        match &mut self.state {
            State::Done(Ok(addresses)) => Ok(addresses.next().map(IpAddress::from)),
            State::Done(Err(code)) => Err(*code),
            State::Pending(_) => Err(ErrorCode::WouldBlock),
        }
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for Lookup {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_done(cx)).await;
    }
}

/// Store state that can do name lookups.
pub trait HasNameLookups: Send + 'static {
    /// The resource table.
    fn table(&mut self) -> &mut ResourceTable;
    /// The guest's lookups; `None`: every lookup fails (`permanent-resolver-failure`).
    fn lookups(&self) -> Option<&NameLookups>;
}

/// Shadows `wasi:sockets/ip-name-lookup` in `linker` (after wasmtime-wasi's `add_to_linker`).
///
/// # Errors
/// When the linker refuses a definition.
pub fn add_to_linker<T: HasNameLookups>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut lookup = linker.instance(INTERFACE)?;
    lookup.resource(
        "resolve-address-stream",
        ResourceType::host::<Lookup>(),
        |mut store, rep| {
            store
                .data_mut()
                .table()
                .delete(Resource::<Lookup>::new_own(rep))?;
            Ok(())
        },
    )?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store,
         (network, name): (Resource<wasmtime_wasi::p2::Network>, String)|
         -> wasmtime::Result<(Result<Resource<Lookup>, ErrorCode>,)> {
            let state = store.data_mut();
            // The network resource is the capability to look up; it must be a live one.
            state.table().get(&network)?;
            let Some(lookups) = state.lookups().cloned() else {
                return Ok((Err(ErrorCode::PermanentResolverFailure),));
            };
            let lookup = Lookup::start(&lookups, name);
            Ok((Ok(state.table().push(lookup)?),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store,
         (this,): (Resource<Lookup>,)|
         -> wasmtime::Result<(Result<Option<IpAddress>, ErrorCode>,)> {
            Ok((store.data_mut().table().get_mut(&this)?.next(),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store,
         (this,): (Resource<Lookup>,)|
         -> wasmtime::Result<(Resource<wasmtime_wasi::p2::DynPollable>,)> {
            Ok((wasmtime_wasi::p2::subscribe(
                store.data_mut().table(),
                this,
            )?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
