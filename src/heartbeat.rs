//! A heartbeat between the hosts of a multi-host job, so that a host that vanishes fails the
//! others within seconds rather than after `distributed_timeout`.
//!
//! A host whose process ends closes its connections, and the others' exchange through Gloo fails
//! at once. But a host can vanish without that close ever reaching the others: its machine lost,
//! its network cut, or its container killed while the kernel still held data the receiver had
//! no room for yet (the FIN queued behind it dies with the container's network namespace). Gloo
//! then waits out the distributed_timeout (300 s by default) for an exchange that cannot end.
//!
//! So every host but the first keeps one TCP connection to the first, and both ends write a
//! byte every [`BEAT`]. A host leaving the group on purpose (done, failed or stopped) says
//! goodbye first. A peer whose connection ends without a goodbye, or that sends nothing for
//! [`SILENCE`], is gone: this host then shuts down its own TCP connections to the job's hosts,
//! which ends the exchange in progress (or the next) as a closed connection does, through the
//! job's usual failure path.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tracing::{error, warn};

use crate::distributed::Topology;
use crate::error::no_thread;

/// How often each end writes.
pub const BEAT: Duration = Duration::from_secs(1);
/// How long a peer may send nothing before it is taken as gone (or `distributed_timeout`, if
/// shorter).
pub const SILENCE: Duration = Duration::from_secs(15);

const ALIVE: u8 = b'.';
const GOODBYE: u8 = b'G';

/// What the watching threads share with the group.
struct Shared {
    /// Set when this host leaves the group: a peer leaving too is then expected.
    leaving: AtomicBool,
    /// Why a peer was taken as gone, once one was.
    lost: Mutex<Option<String>>,
    /// The job's hosts' addresses: this host's connections to them are what a loss shuts down.
    hosts: Vec<IpAddr>,
}

impl Shared {
    fn lose(&self, why: String) {
        if self.leaving.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
            if lost.is_some() {
                return;
            }
            // Recorded before the connections close, so the failed exchange can say why.
            *lost = Some(why.clone());
        }
        let closed = sever(&self.hosts);
        error!(connections = closed, "{why}; closing this host's connections to the other hosts");
    }
}

/// The first host's listener, open before the process group forms so that the others find
/// its port in the store once they are in the group.
pub struct Listener(TcpListener);

impl Listener {
    /// Listens on a port the kernel picks; the caller publishes [`Listener::port`].
    pub fn open() -> Result<Self> {
        let listener = TcpListener::bind(("0.0.0.0", 0)).context("opening the heartbeat port")?;
        Ok(Self(listener))
    }

    pub fn port(&self) -> Result<u16> {
        Ok(self.0.local_addr()?.port())
    }
}

/// This host's heartbeat; dropping it says goodbye to the peers.
pub struct Heartbeat {
    shared: Arc<Shared>,
    peers: Vec<TcpStream>,
    stop_writer: Option<mpsc::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Heartbeat {
    /// Connects the hosts: the first accepts every other's connection (`listener`), the others
    /// connect to the first's `port`; each waits until `deadline`.
    pub fn start(
        topology: &Topology,
        listener: Option<Listener>,
        port: u16,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Self> {
        let peers: Vec<(String, TcpStream)> = match listener {
            Some(l) => accept_all(&l.0, topology, deadline)?,
            None => vec![(topology.describe(0), connect(topology, port, deadline)?)],
        };
        let mut hosts = resolve_all(topology);
        hosts.extend(peers.iter().filter_map(|(_, s)| s.peer_addr().ok()).map(|a| plain(a.ip())));
        let shared =
            Arc::new(Shared { leaving: AtomicBool::new(false), lost: Mutex::new(None), hosts });
        let silence = SILENCE.min(timeout).max(BEAT * 2);
        let mut threads = Vec::new();
        let mut writers = Vec::new();
        for (who, stream) in peers {
            stream.set_nodelay(true)?;
            stream.set_write_timeout(Some(BEAT))?;
            writers.push(stream.try_clone()?);
            let shared = shared.clone();
            let watcher = std::thread::Builder::new()
                .name("heartbeat-watch".into())
                .spawn(move || watch(stream, &who, silence, &shared))
                .map_err(|e| no_thread(e, "watch the other hosts"))?;
            threads.push(watcher);
        }
        let (stop_writer, stopped) = mpsc::channel();
        let beats: Vec<TcpStream> =
            writers.iter().map(TcpStream::try_clone).collect::<std::io::Result<_>>()?;
        let writer = std::thread::Builder::new()
            .name("heartbeat-beat".into())
            .spawn(move || beat(&beats, &stopped))
            .map_err(|e| no_thread(e, "send heartbeats to the other hosts"))?;
        threads.push(writer);
        Ok(Self { shared, peers: writers, stop_writer: Some(stop_writer), threads })
    }

    /// Why a peer was taken as gone, if one was.
    pub fn lost(&self) -> Option<String> {
        self.shared.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shared.leaving.store(true, Ordering::SeqCst);
        // The writer says goodbye and returns; then the watchers are woken and return.
        drop(self.stop_writer.take());
        if let Some(writer) = self.threads.pop() {
            let _ = writer.join();
        }
        for peer in &self.peers {
            let _ = peer.shutdown(Shutdown::Both);
        }
        for watcher in self.threads.drain(..) {
            let _ = watcher.join();
        }
    }
}

/// Writes a byte to every peer each beat; a goodbye when told to stop.
fn beat(peers: &[TcpStream], stop: &mpsc::Receiver<()>) {
    loop {
        let last = match stop.recv_timeout(BEAT) {
            Err(RecvTimeoutError::Timeout) => ALIVE,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => GOODBYE,
        };
        // A peer that is gone is the watchers' to notice; its write error is not news.
        for mut peer in peers {
            let _ = peer.write_all(&[last]);
        }
        if last == GOODBYE {
            return;
        }
    }
}

/// Reads the peer's beats until it says goodbye, or is gone.
fn watch(mut stream: TcpStream, who: &str, silence: Duration, shared: &Shared) {
    if let Err(e) = stream.set_read_timeout(Some(silence)) {
        warn!(peer = %who, "cannot watch the heartbeat: {e}");
        return;
    }
    let mut buf = [0u8; 64];
    let why = loop {
        match stream.read(&mut buf) {
            Ok(0) => break "closed its heartbeat connection without saying goodbye".to_string(),
            Ok(n) if buf[..n].contains(&GOODBYE) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break format!("sent no heartbeat for {} s", silence.as_secs());
            }
            Err(e) => break format!("broke its heartbeat connection ({e})"),
        }
    };
    shared.lose(format!("host {who} is gone: it {why}"));
}

/// The first host's side: one connection from every other host, each naming its rank.
fn accept_all(
    listener: &TcpListener,
    t: &Topology,
    deadline: Instant,
) -> Result<Vec<(String, TcpStream)>> {
    listener.set_nonblocking(true)?;
    let mut peers: Vec<Option<TcpStream>> = (0..t.world()).map(|_| None).collect();
    while peers.iter().skip(1).any(Option::is_none) {
        match listener.accept() {
            Ok((stream, from)) => match hello(&stream, t.world()) {
                Ok(rank) if peers[rank].is_none() => peers[rank] = Some(stream),
                Ok(rank) => warn!(%from, rank, "a second heartbeat connection for one rank"),
                Err(e) => warn!(%from, "not a heartbeat connection: {e:#}"),
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (1..t.world())
                        .filter(|&r| peers[r].is_none())
                        .map(|r| t.describe(r))
                        .collect();
                    bail!(
                        "host {} did not open its heartbeat connection within the \
                         distributed_timeout",
                        missing.join(", ")
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(anyhow!(e).context("accepting heartbeat connections")),
        }
    }
    Ok(peers.into_iter().enumerate().filter_map(|(r, s)| Some((t.describe(r), s?))).collect())
}

/// The rank a new connection names in its first four bytes.
fn hello(mut stream: &TcpStream, world: usize) -> Result<usize> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut rank = [0u8; 4];
    stream.read_exact(&mut rank)?;
    let rank = u32::from_le_bytes(rank) as usize;
    if rank == 0 || rank >= world {
        bail!("rank {rank} is not one of 1..{world}");
    }
    Ok(rank)
}

/// The other hosts' side: a connection to the first host's heartbeat port, naming this rank.
fn connect(t: &Topology, port: u16, deadline: Instant) -> Result<TcpStream> {
    let addrs: Vec<_> = (t.master(), port).to_socket_addrs()?.collect();
    let mut last = None;
    for addr in &addrs {
        let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        match TcpStream::connect_timeout(addr, wait) {
            Ok(mut stream) => {
                stream.write_all(&(t.rank as u32).to_le_bytes())?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    let why = last.map_or_else(|| "it did not resolve".to_string(), |e| e.to_string());
    bail!("connecting to the heartbeat port {port} of {}: {why}", t.describe(0))
}

/// Every address the job's host names resolve to.
fn resolve_all(t: &Topology) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = t
        .hosts
        .iter()
        .filter_map(|h| (h.as_str(), 0).to_socket_addrs().ok())
        .flatten()
        .map(|a| plain(a.ip()))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Shuts down (without closing: the descriptors stay their owners') every TCP connection of
/// this process to one of `hosts`; returns how many. Gloo's and the store's connections are
/// among them, so their blocked reads end as if the peer had closed.
fn sever(hosts: &[IpAddr]) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut closed = 0;
    for entry in fds.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if tcp_peer(fd).is_some_and(|ip| hosts.contains(&ip)) {
            // SAFETY: shutdown on a descriptor number only changes that socket's state; a
            // number reused meanwhile by another socket to the same hosts is shut down too,
            // which is what is wanted of every such connection.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            closed += 1;
        }
    }
    closed
}

/// The remote address of `fd` if it is a connected TCP socket.
fn tcp_peer(fd: i32) -> Option<IpAddr> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the out pointers are valid for the sizes given; a descriptor that is not a
    // socket only makes the call fail.
    let ok = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut i32).cast(),
            &mut len,
        )
    };
    if ok != 0 || kind != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data, valid when zeroed.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` has room for any address family's sockaddr, as `len` says.
    if unsafe { libc::getpeername(fd, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) }
        != 0
    {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(plain(IpAddr::from(v6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts 127.0.0.{base}, 127.0.0.{base + 1}, …: addresses no other test uses, since a lost
    /// peer shuts down this process's connections to them.
    fn topology(base: usize, world: usize, rank: usize) -> Topology {
        let hosts = (base..base + world).map(|i| format!("127.0.0.{i}")).collect();
        Topology { rank, hosts, port: 0, interface: None }
    }

    #[test]
    fn hosts_that_say_goodbye_are_not_lost() {
        let listener = Listener::open().unwrap();
        let port = listener.port().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let timeout = Duration::from_secs(300);
        let workers: Vec<_> = (1..3)
            .map(|r| {
                std::thread::spawn(move || {
                    Heartbeat::start(&topology(21, 3, r), None, port, deadline, timeout).unwrap()
                })
            })
            .collect();
        let first =
            Heartbeat::start(&topology(21, 3, 0), Some(listener), port, deadline, timeout).unwrap();
        let mut workers: Vec<Heartbeat> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        std::thread::sleep(BEAT * 2);
        let last = workers.pop().unwrap();
        drop(workers);
        std::thread::sleep(BEAT);
        assert_eq!(first.lost(), None);
        // The first host leaving before a worker is no loss to that worker either.
        drop(first);
        std::thread::sleep(BEAT);
        assert_eq!(last.lost(), None);
    }

    /// A first host played by hand on 127.0.0.`base`, and a worker's heartbeat connected to it.
    fn worker_of_a_hand_played_first(base: usize, timeout: Duration) -> (Heartbeat, TcpStream) {
        let listener = TcpListener::bind(format!("127.0.0.{base}:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(10);
        let worker =
            Heartbeat::start(&topology(base, 2, 1), None, port, deadline, timeout).unwrap();
        let (stream, _) = listener.accept().unwrap();
        assert_eq!(hello(&stream, 2).unwrap(), 1);
        (worker, stream)
    }

    #[test]
    fn a_peer_that_goes_silent_is_lost_and_the_connections_to_the_hosts_are_shut() {
        // A stand-in for the worker's other connections to the first host (Gloo's, the store's).
        let other = TcpListener::bind("127.0.0.31:0").unwrap();
        let mut conn = TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let _accepted = other.accept().unwrap();
        let start = Instant::now();
        // The first host never writes: as a host frozen, or cut off from the network.
        let (worker, _first) = worker_of_a_hand_played_first(31, Duration::from_secs(2));
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(conn.read(&mut [0u8; 1]).unwrap(), 0, "the connection was not shut down");
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(6), "{took:?}");
        let lost = worker.lost().unwrap();
        assert_eq!(lost, "host 127.0.0.31 (rank 0) is gone: it sent no heartbeat for 2 s");
    }

    #[test]
    fn a_peer_that_closes_without_a_goodbye_is_lost_at_once() {
        let (worker, first) = worker_of_a_hand_played_first(41, Duration::from_secs(300));
        (&first).write_all(&[ALIVE]).unwrap();
        let start = Instant::now();
        // The end of the stream, with no goodbye before it.
        first.shutdown(Shutdown::Write).unwrap();
        while worker.lost().is_none() {
            assert!(start.elapsed() < Duration::from_secs(2), "not noticed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(worker.lost().unwrap().ends_with("without saying goodbye"), "{:?}", worker.lost());
    }

    #[test]
    fn mapped_addresses_are_plain_ipv4() {
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(plain(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(plain(v6), v6);
    }
}
