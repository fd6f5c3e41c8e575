//! The stub resolver behind a guest's `wasi:sockets/ip-name-lookup`: the pod's DNS
//! configuration ([`PodDns`]: nameservers, search list, `ndots`, `timeout`, `attempts`), as
//! glibc's resolver follows `/etc/resolv.conf` in a container, with its queries sent from
//! inside the pod's network namespace (so a pod reaches exactly the DNS its network reaches).
//!
//! Queries are A then AAAA per candidate name, over UDP, retried over TCP when the answer is
//! truncated; the first candidate with addresses wins; `NXDOMAIN` or no data moves on to the
//! next. DNS messages are hickory-proto's. Lookups are bounded: a few at a time per pod, each
//! server tried `attempts` times for `timeout` seconds.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::dns::PodDns;
use super::netns::NetNs;

/// Lookups one pod may have in flight; more wait.
pub const MAX_CONCURRENT_LOOKUPS: usize = 4;

/// Why a name did not resolve (the WASI `ip-name-lookup` error codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// Not a valid domain name.
    #[error("{0:?} is not a valid domain name")]
    InvalidName(String),
    /// Every candidate name was answered with no such name or no address.
    #[error("{0} does not resolve")]
    NameUnresolvable(String),
    /// No nameserver answered (or the pod has none).
    #[error("no nameserver answered for {name}: {why}")]
    TemporaryFailure {
        /// The name asked for.
        name: String,
        /// The last error.
        why: String,
    },
}

/// A name that resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The candidate that answered (fully qualified, no trailing dot), or the literal.
    pub name: String,
    /// Its addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
}

/// What one query got.
enum Answer {
    Addresses(Vec<IpAddr>),
    NoSuchName,
}

/// A pod's resolver.
#[derive(Clone)]
pub struct Resolver {
    dns: Arc<PodDns>,
    namespace: Option<Arc<NetNs>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("dns", &self.dns)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Resolves with `dns`, from inside `namespace` (`None`: the kubelet's own network).
    pub fn new(dns: PodDns, namespace: Option<Arc<NetNs>>) -> Self {
        Self {
            dns: Arc::new(dns),
            namespace,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_LOOKUPS)),
        }
    }

    /// The configuration it follows.
    pub fn dns(&self) -> &PodDns {
        &self.dns
    }

    /// The addresses of `name` (IPv4 first), or why there are none. An IP literal is itself.
    ///
    /// # Errors
    /// [`LookupError`].
    pub async fn lookup(&self, name: &str) -> Result<Resolved, LookupError> {
        if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(Resolved {
                name: name.to_string(),
                addresses: vec![ip],
            });
        }
        let candidates = self
            .dns
            .candidates(name)
            .into_iter()
            .map(|c| Name::from_utf8(&c).map_err(|_| LookupError::InvalidName(name.into())))
            .collect::<Result<Vec<_>, _>>()?;
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| LookupError::TemporaryFailure {
                name: name.into(),
                why: "the resolver is closed".into(),
            })?;
        let dns = self.dns.clone();
        let namespace = self.namespace.clone();
        let wanted = name.to_string();
        // Plain blocking sockets on a blocking thread, which enters the pod's namespace first:
        // a socket belongs to the namespace of the thread that makes it.
        tokio::task::spawn_blocking(move || {
            let work = || lookup_blocking(&dns, &candidates, &wanted, DNS_PORT);
            match &namespace {
                Some(ns) => ns.run(work).map_err(|e| LookupError::TemporaryFailure {
                    name: wanted.clone(),
                    why: e.to_string(),
                })?,
                None => work(),
            }
        })
        .await
        .map_err(|e| LookupError::TemporaryFailure {
            name: name.into(),
            why: e.to_string(),
        })?
    }
}

/// The port nameservers answer on.
const DNS_PORT: u16 = 53;

/// Walks the candidates (each A then AAAA) against the nameservers at `port`.
fn lookup_blocking(
    dns: &PodDns,
    candidates: &[Name],
    name: &str,
    port: u16,
) -> Result<Resolved, LookupError> {
    if dns.nameservers.is_empty() {
        return Err(LookupError::TemporaryFailure {
            name: name.into(),
            why: "the pod has no nameserver".into(),
        });
    }
    let mut last_error = None;
    let mut answered = false;
    for candidate in candidates {
        let mut found = Vec::new();
        for kind in [RecordType::A, RecordType::AAAA] {
            match ask_servers(dns, candidate, kind, port) {
                Ok(Answer::Addresses(addresses)) => {
                    answered = true;
                    found.extend(addresses);
                }
                Ok(Answer::NoSuchName) => {
                    answered = true;
                    break;
                }
                Err(why) => last_error = Some(why),
            }
        }
        if !found.is_empty() {
            return Ok(Resolved {
                name: candidate.to_ascii().trim_end_matches('.').to_string(),
                addresses: found,
            });
        }
    }
    match (answered, last_error) {
        (false, Some(why)) => Err(LookupError::TemporaryFailure {
            name: name.into(),
            why,
        }),
        _ => Err(LookupError::NameUnresolvable(name.into())),
    }
}

/// Asks each nameserver in turn, `attempts` rounds, until one answers.
fn ask_servers(dns: &PodDns, name: &Name, kind: RecordType, port: u16) -> Result<Answer, String> {
    let timeout = Duration::from_secs(dns.timeout_secs());
    let mut last = String::from("no nameserver");
    for _ in 0..dns.attempts() {
        for server in &dns.nameservers {
            match ask(SocketAddr::new(*server, port), name, kind, timeout) {
                Ok(answer) => return Ok(answer),
                Err(why) => last = format!("{server}: {why}"),
            }
        }
    }
    Err(last)
}

/// One query to one server: UDP, and TCP again if the answer was truncated.
fn ask(
    server: SocketAddr,
    name: &Name,
    kind: RecordType,
    timeout: Duration,
) -> Result<Answer, String> {
    let id: u16 = rand_id();
    let mut query = Message::new();
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    let mut fqdn = name.clone();
    fqdn.set_fqdn(true);
    query.add_query(Query::query(fqdn, kind));
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket.connect(server).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    socket.send(&bytes).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let reply = loop {
        let n = socket.recv(&mut buf).map_err(|e| e.to_string())?;
        match Message::from_vec(&buf[..n]) {
            Ok(reply) if reply.id() == id && reply.message_type() == MessageType::Response => {
                break reply;
            }
            // Not ours (a late answer to an earlier try): keep waiting.
            _ => continue,
        }
    };
    let reply = if reply.truncated() {
        ask_tcp(server, &bytes, id, timeout)?
    } else {
        reply
    };
    match reply.response_code() {
        ResponseCode::NoError => Ok(Answer::Addresses(
            reply
                .answers()
                .iter()
                .filter_map(|r| match r.data() {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect(),
        )),
        ResponseCode::NXDomain => Ok(Answer::NoSuchName),
        code => Err(format!("answered {code}")),
    }
}

fn ask_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Message, String> {
    let mut stream = TcpStream::connect_timeout(&server, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let len = u16::try_from(query.len()).map_err(|e| e.to_string())?;
    stream
        .write_all(&[&len.to_be_bytes()[..], query].concat())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(head))];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&body).map_err(|e| e.to_string())?;
    if reply.id() != id {
        return Err("a TCP answer to another query".into());
    }
    Ok(reply)
}

/// A query ID that a spoofer cannot guess.
fn rand_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 2];
    if ring::rand::SystemRandom::new().fill(&mut id).is_err() {
        // The time is a poor source, but a query still works.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return nanos as u16;
    }
    u16::from_ne_bytes(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA};
    use std::collections::HashMap;

    /// A DNS server on 127.0.0.1:53 is not ours to take: tests bind a port of their own and
    /// the resolver is pointed at it through this.
    struct FakeServer {
        port: u16,
        asked: Arc<std::sync::Mutex<Vec<String>>>,
    }

    /// Answers A/AAAA from `zone` (fully qualified names), NXDOMAIN otherwise.
    fn serve(zone: HashMap<&'static str, Vec<IpAddr>>) -> FakeServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = socket.local_addr().expect("addr").port();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries().first().cloned() else {
                    continue;
                };
                let name = q.name().to_ascii();
                log.lock()
                    .expect("lock")
                    .push(format!("{name} {}", q.query_type()));
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .add_query(q.clone());
                match zone.get(name.trim_end_matches('.')) {
                    Some(ips) => {
                        for ip in ips {
                            let data = match (ip, q.query_type()) {
                                (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                                _ => continue,
                            };
                            reply.add_answer(Record::from_rdata(q.name().clone(), 30, data));
                        }
                    }
                    None => {
                        reply.set_response_code(ResponseCode::NXDomain);
                    }
                }
                let _ = socket.send_to(&reply.to_vec().expect("encode"), from);
            }
        });
        FakeServer { port, asked }
    }

    fn dns(options: &[&str]) -> PodDns {
        PodDns {
            nameservers: vec![IpAddr::from([127, 0, 0, 1])],
            searches: vec!["shop.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn resolve(server: &FakeServer, dns: &PodDns, name: &str) -> Result<Resolved, LookupError> {
        let candidates: Vec<Name> = dns
            .candidates(name)
            .iter()
            .map(|c| Name::from_utf8(c).expect("name"))
            .collect();
        lookup_blocking(dns, &candidates, name, server.port)
    }

    #[test]
    fn a_short_name_is_found_through_the_search_list() {
        let server = serve(HashMap::from([(
            "web.svc.cluster.local",
            vec![IpAddr::from([10, 0, 0, 7]), "fd00::7".parse().expect("v6")],
        )]));
        let found = resolve(&server, &dns(&["ndots:5"]), "web").expect("resolves");
        assert_eq!(found.name, "web.svc.cluster.local");
        assert_eq!(
            found.addresses,
            [IpAddr::from([10, 0, 0, 7]), "fd00::7".parse().expect("v6")]
        );
        let asked = server.asked.lock().expect("lock").clone();
        // shop.svc first (NXDOMAIN, so no AAAA asked), then svc: A and AAAA.
        assert_eq!(
            asked,
            [
                "web.shop.svc.cluster.local. A",
                "web.svc.cluster.local. A",
                "web.svc.cluster.local. AAAA"
            ]
        );
    }

    #[test]
    fn an_unknown_name_is_unresolvable_after_every_candidate() {
        let server = serve(HashMap::new());
        let error = resolve(&server, &dns(&["ndots:5"]), "nowhere").expect_err("no such name");
        assert_eq!(error, LookupError::NameUnresolvable("nowhere".into()));
        assert_eq!(server.asked.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn literals_need_no_server_and_no_nameserver_is_a_temporary_failure() {
        let resolver = Resolver::new(PodDns::default(), None);
        assert_eq!(
            resolver.lookup("10.1.2.3").await.map(|r| r.addresses),
            Ok(vec![IpAddr::from([10, 1, 2, 3])])
        );
        assert_eq!(
            resolver.lookup("[::1]").await.map(|r| r.addresses),
            Ok(vec!["::1".parse().expect("v6")])
        );
        assert!(matches!(
            resolver.lookup("web").await,
            Err(LookupError::TemporaryFailure { .. })
        ));
        assert!(matches!(
            resolver.lookup("bad..name").await,
            Err(LookupError::InvalidName(_)) | Err(LookupError::TemporaryFailure { .. })
        ));
    }

    #[test]
    fn a_silent_server_times_out_within_its_budget() {
        let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let started = std::time::Instant::now();
        let result = ask(
            addr,
            &Name::from_ascii("web.example").expect("name"),
            RecordType::A,
            Duration::from_millis(300),
        );
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
