//! Multi-host, data-parallel training through libtorch's c10d (the engine under PyTorch DDP):
//! a TCPStore on the first host for the rendezvous, ProcessGroupGloo for the collectives.
//!
//! SageMaker starts the same image on `algo-1 … algo-N` and lists them in
//! `resourceconfig.json`. A host's rank is its position in that list; `hosts[0]` is the master.
//! Every rank holds the same data, takes its slice of each global batch, and the ranks average
//! their gradients with one all-reduce per step, so all end with the same weights. The C++ side
//! is `src/native/dist.cpp`.

use std::ffi::CString;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tch::{Kind, Tensor};
use tracing::{info, warn};

use crate::contract::ResourceConfig;
use crate::error::{user, Stopped};
use crate::heartbeat::{self, Heartbeat};
use crate::native::{ProcessGroup, Store};

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow!("{s:?} contains a NUL byte"))
}

/// Who is who in a job, from `resourceconfig.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub rank: usize,
    pub hosts: Vec<String>,
    pub port: u16,
    /// The interface the hosts share (SageMaker's `network_interface_name`), if named.
    pub interface: Option<String>,
}

impl Topology {
    pub fn new(rc: &ResourceConfig, port: u16) -> Self {
        let rank = rc.rank();
        Self { rank, hosts: rc.hosts.clone(), port, interface: rc.network_interface_name.clone() }
    }

    pub fn world(&self) -> usize {
        self.hosts.len()
    }

    pub fn master(&self) -> &str {
        &self.hosts[0]
    }

    pub fn host(&self) -> &str {
        &self.hosts[self.rank]
    }

    /// `algo-2 (rank 1)`, for messages.
    pub fn describe(&self, rank: usize) -> String {
        format!("{} (rank {rank})", self.hosts[rank])
    }

    /// How many of the job's processes share this machine: hosts given as loopback addresses
    /// (how tests and benchmarks run several ranks on one machine); 1 otherwise.
    pub fn local_processes(&self) -> usize {
        let loopback = |h: &str| {
            h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        };
        if loopback(self.host()) {
            self.hosts.iter().filter(|h| loopback(h)).count()
        } else {
            1
        }
    }
}

/// How the training data lies over the ranks.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Every rank holds the same samples (FullyReplicated) and takes its rows of every batch.
    Replicated,
    /// Each rank holds its own shard (ShardedByS3Key), of these sizes in rank order, and fills
    /// its rows of every batch from it.
    Sharded(Vec<usize>),
}

/// This process's part in a multi-host job: its group, and how the data lies.
pub struct Parallel<'a> {
    pub group: &'a Group,
    pub layout: Layout,
}

/// Rows `lo..hi` of a batch of `len` that rank `rank` of `world` takes: contiguous, sizes
/// differing by at most one, the first ranks taking the extra rows.
pub fn share(len: usize, rank: usize, world: usize) -> (usize, usize) {
    let (base, extra) = (len / world, len % world);
    let lo = rank * base + rank.min(extra);
    (lo, lo + base + usize::from(rank < extra))
}

/// This process's membership in the job's process group.
pub struct Group {
    // Dropped first: the goodbye to the other hosts goes before the connections close.
    heartbeat: Heartbeat,
    // Declared before the store, so dropped before the store it was made over.
    pg: ProcessGroup,
    _store: Store,
    pub topology: Topology,
    /// All-reduces so far and their total time, for the log and the benchmark.
    reduces: std::cell::Cell<(u64, Duration)>,
}

/// The store key under which the first host publishes its heartbeat port.
const HEARTBEAT_KEY: &str = "heartbeat/port";

/// The first host's heartbeat port, from the store.
fn heartbeat_port(store: &Store) -> Result<u16> {
    let text = store
        .get(&cstring(HEARTBEAT_KEY)?)
        .map_err(|e| anyhow!("reading the first host's heartbeat port: {e}"))?;
    text.parse().map_err(|_| anyhow!("the first host published heartbeat port {text:?}"))
}

/// How long one attempt to reach the master waits before we log and try again.
const ATTEMPT: Duration = Duration::from_secs(5);

impl Group {
    /// Meets the other hosts: waits (bounded by `timeout`, logging) for the master's name to
    /// resolve and its store to answer, then for every host to register, then builds the Gloo
    /// process group. A host that never comes fails the job with its name.
    pub fn join(topology: &Topology, timeout: Duration, stop: &AtomicBool) -> Result<Self> {
        let started = Instant::now();
        let deadline = started + timeout;
        let world = topology.world();
        info!(
            rank = topology.rank,
            world,
            master = %format!("{}:{}", topology.master(), topology.port),
            timeout_seconds = timeout.as_secs(),
            "joining the other hosts"
        );
        resolve_master(topology, deadline, stop)?;
        let store = open_store(topology, deadline, stop)?;
        register(&store, topology, deadline, stop)?;
        // The first host's heartbeat port is in the store before the group forms, so the
        // others find it there once they are in the group.
        let listener = match topology.rank {
            0 => {
                let l = heartbeat::Listener::open()?;
                store
                    .set(&cstring(HEARTBEAT_KEY)?, &cstring(&l.port()?.to_string())?)
                    .map_err(|e| anyhow!("publishing the heartbeat port: {e}"))?;
                Some(l)
            }
            _ => None,
        };
        let iface = cstring(topology.interface.as_deref().unwrap_or(""))?;
        let host = cstring(topology.host())?;
        // Gloo's own limit for every later exchange; a peer that dies closes its connections,
        // or goes quiet on the heartbeat, which fails an exchange within seconds, so this only
        // bounds a peer that hangs.
        let pg = ProcessGroup::new(&store, (topology.rank, world), &iface, &host, timeout)
            .map_err(|e| anyhow!("setting up Gloo between {:?}: {e}", topology.hosts))?;
        let port = match &listener {
            Some(l) => l.port()?,
            None => heartbeat_port(&store)?,
        };
        let heartbeat =
            Heartbeat::start(topology, listener, port, Instant::now() + timeout, timeout)?;
        let this = Self {
            heartbeat,
            pg,
            _store: store,
            topology: topology.clone(),
            reduces: Default::default(),
        };
        info!(
            rank = topology.rank,
            world,
            seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
            "all hosts joined"
        );
        Ok(this)
    }

    pub fn rank(&self) -> usize {
        self.topology.rank
    }

    pub fn world(&self) -> usize {
        self.topology.world()
    }

    /// Why `op` failed: the heartbeat's word on a lost host, when it has one, says more than
    /// Gloo's on the connection it then closed.
    fn failed(&self, op: &str, e: String) -> anyhow::Error {
        let why = self.heartbeat.lost().unwrap_or_else(|| tidy(&e).to_string());
        anyhow!(
            "{op} across hosts {:?} failed on {}: {why} (another host probably stopped or \
             failed; its log says why)",
            self.topology.hosts,
            self.topology.describe(self.rank()),
        )
    }

    /// Fails `op` before it starts once a host is known to be gone.
    fn check_peers(&self, op: &str) -> Result<()> {
        match self.heartbeat.lost() {
            Some(why) => Err(self.failed(op, why)),
            None => Ok(()),
        }
    }

    /// Sums `t` (contiguous, on any device Gloo handles) over all ranks, in place. Every rank
    /// ends with the same bits.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        self.check_peers("all-reduce")?;
        let start = Instant::now();
        self.pg.all_reduce_sum(t).map_err(|e| self.failed("all-reduce", e))?;
        let (n, total) = self.reduces.get();
        self.reduces.set((n + 1, total + start.elapsed()));
        Ok(())
    }

    /// How many all-reduces this process made, and their mean time (waiting for slower ranks
    /// included).
    pub fn all_reduce_stats(&self) -> (u64, Duration) {
        let (n, total) = self.reduces.get();
        (n, total.checked_div(n.max(1) as u32).unwrap_or_default())
    }

    /// Overwrites `t` on every rank with rank `root`'s `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        self.check_peers("broadcast")?;
        self.pg.broadcast(t, root).map_err(|e| self.failed("broadcast", e))
    }

    /// Rank 0's `bytes` on every rank (what the others pass is ignored).
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.broadcast_bytes_from(bytes, 0)
    }

    /// Rank `root`'s `bytes` on every rank.
    fn broadcast_bytes_from(&self, bytes: &[u8], root: usize) -> Result<Vec<u8>> {
        let len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast(&len, root)?;
        let len = len.int64_value(&[0]) as usize;
        let buf = if self.rank() == root {
            Tensor::from_slice(bytes)
        } else {
            Tensor::zeros([len as i64], (Kind::Uint8, tch::Device::Cpu))
        };
        self.broadcast(&buf, root)?;
        let mut out = vec![0u8; len];
        buf.copy_data(&mut out, len);
        Ok(out)
    }

    /// Every rank's `bytes`, in rank order, on every rank.
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        (0..self.world()).map(|root| self.broadcast_bytes_from(bytes, root)).collect()
    }

    /// Whether every rank says `ok`: how one rank's refusal (say, of rank 0's starting state)
    /// reaches the others as a clear failure instead of a broken connection later.
    pub fn all_ok(&self, ok: bool) -> Result<Vec<usize>> {
        let flags = Tensor::zeros([self.world() as i64], (Kind::Float, tch::Device::Cpu));
        if !ok {
            let _ = flags.get(self.rank() as i64).fill_(1.0);
        }
        self.all_reduce_sum(&flags)?;
        let flags: Vec<f32> = Vec::try_from(&flags)?;
        Ok(flags.iter().enumerate().filter(|(_, &f)| f > 0.0).map(|(r, _)| r).collect())
    }
}

/// Gloo's message without its source location and its generic advice: the failure file has
/// room for one line, and what broke is the part worth it.
fn tidy(msg: &str) -> &str {
    let msg = match (msg.starts_with('['), msg.find("] ")) {
        (true, Some(end)) => &msg[end + 2..],
        _ => msg,
    };
    msg.split(". This is typically caused").next().unwrap_or(msg).trim_end_matches('.')
}

/// Waits for the master's name to resolve (SageMaker's DNS can lag at start).
fn resolve_master(t: &Topology, deadline: Instant, stop: &AtomicBool) -> Result<()> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match (t.master(), t.port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) if Instant::now() >= deadline => {
                return Err(user(format!(
                    "master host {} (rank 0 in resourceconfig.json's hosts) did not resolve \
                     within the distributed_timeout after {attempts} attempts: {e}",
                    t.master()
                )));
            }
            Err(e) => {
                warn!(master = %t.master(), attempt = attempts, "master does not resolve yet: {e}")
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Stopped(" while waiting for the master host".into()).into());
        }
        std::thread::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
}

/// Announces this host in the store and waits for every other host to do the same.
fn register(store: &Store, t: &Topology, deadline: Instant, stop: &AtomicBool) -> Result<()> {
    let key = cstring(&format!("host/{}", t.rank))?;
    let value = cstring(t.host())?;
    store
        .set(&key, &value)
        .map_err(|e| anyhow!("registering with the master {}: {e}", t.master()))?;
    let mut last_log = Instant::now();
    loop {
        let mut missing = Vec::new();
        for rank in 0..t.world() {
            let key = cstring(&format!("host/{rank}"))?;
            let present = store
                .contains(&key)
                .map_err(|e| anyhow!("asking the master {} who joined: {e}", t.master()))?;
            if !present {
                missing.push(t.describe(rank));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Stopped(" while waiting for the other hosts".into()).into());
        }
        if Instant::now() >= deadline {
            return Err(user(format!(
                "host {} did not join within the distributed_timeout ({} of {} hosts \
                     missing; check that every host runs this job and can reach {}:{})",
                missing.join(", "),
                missing.len(),
                t.world(),
                t.master(),
                t.port
            )));
        }
        if last_log.elapsed() >= ATTEMPT {
            info!(missing = %missing.join(", "), "waiting for hosts to join");
            last_log = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rank 0 opens the store; the others connect to it, retrying until the deadline.
fn open_store(t: &Topology, deadline: Instant, stop: &AtomicBool) -> Result<Store> {
    let host = cstring(t.master())?;
    let server = t.rank == 0;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let wait =
            if server { left.max(ATTEMPT) } else { ATTEMPT.min(left).max(Duration::from_secs(1)) };
        let result = Store::new(&host, t.port, server, t.world(), wait);
        match result {
            Ok(store) => return Ok(store),
            Err(e) if server => {
                bail!("{}: cannot listen on port {} as the master: {e}", t.host(), t.port)
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(user(format!(
                    "master host {} did not answer on port {} within the distributed_timeout \
                     ({attempts} attempts; last: {e}); check that it runs this job",
                    t.master(),
                    t.port
                )))
            }
            Err(e) => {
                warn!(master = %format!("{}:{}", t.master(), t.port), attempt = attempts, "master not reachable yet: {e}")
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Err(Stopped(" while waiting for the master host".into()).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_once_and_differ_by_at_most_one() {
        for world in 1..5 {
            for len in 0..40 {
                let parts: Vec<_> = (0..world).map(|r| share(len, r, world)).collect();
                assert_eq!(parts[0].0, 0);
                assert_eq!(parts[world - 1].1, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].1, w[1].0);
                }
                let sizes: Vec<_> = parts.iter().map(|(a, b)| b - a).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }

    #[test]
    fn gloo_messages_lose_their_source_location_and_advice() {
        let raw = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read \
                   error [127.0.0.1]:50325: Connection reset by peer. This is typically caused \
                   by a remote worker hanging or bugs in the application. GLHF!";
        assert_eq!(tidy(raw), "Read error [127.0.0.1]:50325: Connection reset by peer");
        assert_eq!(tidy("Timed out waiting 3000ms"), "Timed out waiting 3000ms");
    }

    #[test]
    fn rank_is_the_position_in_hosts_and_loopback_hosts_share_the_machine() {
        let rc = |current: &str, hosts: &[&str]| ResourceConfig {
            current_host: current.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            current_instance_type: None,
            network_interface_name: Some("eth0".into()),
        };
        let t = Topology::new(&rc("algo-2", &["algo-1", "algo-2", "algo-3"]), 29500);
        assert_eq!((t.rank, t.world(), t.master()), (1, 3, "algo-1"));
        assert_eq!(t.interface.as_deref(), Some("eth0"));
        assert_eq!(t.local_processes(), 1);
        let t = Topology::new(&rc("127.0.0.2", &["127.0.0.1", "127.0.0.2"]), 1);
        assert_eq!((t.rank, t.local_processes()), (1, 2));
    }
}
