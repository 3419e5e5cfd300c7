//! Stage 4 data plane: a userspace overlay tunnel between nodes. Every inner IPv4 packet
//! read from the TUN device travels as one UDP datagram `local:port → peer:port`, the
//! same wire format as the talk's `socat TUN:... UDP:peer:9000,bind=local:9000`, and
//! every datagram from a peer is checked and written back into the TUN.
//!
//! Each forwarding thread moves packets in both directions (see forward.rs for why not
//! one per direction) for its share of the flows: one thread per CPU, each with its own
//! TUN queue and UDP socket (steer.rs). A supervisor thread takes signals and writes
//! counters. When the kernel allows it, the "offload" path (TUN TSO + UDP GSO/GRO) moves
//! 64 KB per syscall instead of one packet; the wire format stays identical.

#![forbid(unsafe_code)] // every syscall goes through crate::sys

mod checksum;
mod coalesce;
mod forward;
mod packet;
mod peers;
mod rx;
mod segment;
mod stats;
mod steer;
mod tx;
mod vnet;
mod wire;
pub mod launch;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::sys::term::TermSignals;
use crate::sys::tun::{OFFLOAD_TSO4_CSUM, TunFd};
use crate::sys::udp::UdpSock;
use peers::PeerTable;
use stats::{Counters, DATAPATH_OFFLOAD, DATAPATH_PLAIN};

pub use stats::Stats;
pub use wire::WireFormat;

/// A remote node: where its tunnel listens and which inner subnets live behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddrV4,
    pub subnets: Vec<(Ipv4Addr, u8)>,
}

/// Whether to try the TSO + UDP GSO/GRO fast path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffloadMode {
    /// Detect support at start; fall back to the plain path if the kernel refuses.
    #[default]
    Auto,
    /// Always the plain path: one packet per read/write, batched sendmmsg/recvmmsg.
    Off,
}

impl std::str::FromStr for OffloadMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(OffloadMode::Auto),
            "off" => Ok(OffloadMode::Off),
            _ => Err(anyhow!("offload mode must be 'auto' or 'off', not {s:?}")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// TUN interface, e.g. "tun0"; attached if it exists (persistent), else created.
    pub dev: String,
    /// Local UDP address to bind, e.g. 10.0.0.10:9000.
    pub local: SocketAddrV4,
    /// Packets go to the peer owning their destination (longest prefix).
    pub peers: Vec<Peer>,
    /// JSON counters, rewritten atomically about once a second and on exit.
    pub stats_path: Option<PathBuf>,
    pub offload: OffloadMode,
    /// Datagram framing: the bare inner packet by default (`Raw`); `TunPi` interoperates
    /// with the talk's exact socat command (which prefixes the 4-byte TUN header).
    pub wire: WireFormat,
    /// Forwarding threads; None: one per CPU, at most MAX_QUEUES.
    pub queues: Option<usize>,
}

/// Socket buffer size: room for a few dozen 64 KB trains in flight.
const SOCKET_BUFFER: usize = 8 << 20;
/// How often the counters file is rewritten (a small write to tmpfs): `cnet status` shows
/// counters at most this old.
const STATS_INTERVAL: Duration = Duration::from_millis(250);

/// State the forwarding threads borrow (via scoped threads) and the supervisor watches.
struct Shared {
    /// One per forwarding thread.
    queues: Vec<Queue>,
    peers: PeerTable,
    offload: bool,
    wire: WireFormat,
    counters: Counters,
    stop: AtomicBool,
}

/// What one forwarding thread owns: a queue of the TUN device and a socket of the UDP
/// group. The kernel spreads the TUN's outgoing flows over the queues, and the steering
/// program (steer.rs) spreads arriving datagrams by inner flow over the sockets.
struct Queue {
    tun: TunFd,
    sock: UdpSock,
}

/// TUNSETIFF + TUNSETPERSIST(1) with IFF_TUN|IFF_NO_PI|IFF_MULTI_QUEUE: create `name` so
/// that it outlives this process and can be configured over netlink before the tunnel
/// attaches to it (one queue per forwarding thread).
pub fn create_persistent_tun(name: &str) -> Result<()> {
    let tun = TunFd::open(name, false, true).with_context(|| format!("creating TUN device {name}"))?;
    tun.set_persist(true).with_context(|| format!("making {name} persistent"))?;
    Ok(())
}

/// Run the tunnel until SIGTERM or SIGINT, then write final stats and return Ok.
/// Must be called before any other thread exists that could take those signals.
pub fn run(cfg: &TunnelConfig) -> Result<()> {
    let peers = PeerTable::new(&cfg.peers)?;
    let (queues, offload) = open_queues(cfg)?;
    let datapath = if offload { DATAPATH_OFFLOAD } else { DATAPATH_PLAIN };
    tracing::info!(dev = %cfg.dev, local = %cfg.local, peers = cfg.peers.len(), datapath, queues = queues.len(), wire = ?cfg.wire, "tunnel running");

    let sh = Shared { queues, peers, offload, wire: cfg.wire, counters: Counters::default(), stop: AtomicBool::new(false) };
    // Block the signals before spawning so the workers inherit the mask and only
    // this thread ever sees SIGTERM/SIGINT.
    let signals = TermSignals::block().context("blocking SIGTERM/SIGINT")?;
    let result = thread::scope(|s| supervise(s, &sh, &signals, cfg.stats_path.as_deref(), datapath));

    if offload {
        // Leave a persistent device as we found it: a later plain reader (socat) must not
        // be handed super-packets.
        let _ = sh.queues[0].tun.set_offload(0);
    }
    if let Some(p) = &cfg.stats_path {
        stats::write_stats(p, &sh.counters.snapshot(datapath, sh.queues.len()))?;
    }
    result
}

/// Start one forwarding thread per queue, write stats every STATS_INTERVAL, and stop them
/// all on a signal or when one fails.
fn supervise<'s>(
    s: &'s thread::Scope<'s, '_>,
    sh: &'s Shared,
    signals: &TermSignals,
    stats_path: Option<&Path>,
    datapath: &str,
) -> Result<()> {
    let mut workers = Vec::with_capacity(sh.queues.len());
    for (i, q) in sh.queues.iter().enumerate() {
        match thread::Builder::new().name(format!("forward{i}")).spawn_scoped(s, move || forward::run(sh, q)) {
            Ok(h) => workers.push(h),
            Err(e) => {
                sh.stop.store(true, Relaxed);
                return Err(e.into());
            }
        }
    }
    let mut outcome = Ok(());
    loop {
        if let Some(p) = stats_path
            && let Err(e) = stats::write_stats(p, &sh.counters.snapshot(datapath, sh.queues.len()))
        {
            tracing::warn!("stats: {e:#}");
        }
        if workers.iter().any(|w| w.is_finished()) {
            break;
        }
        match signals.wait(STATS_INTERVAL) {
            Ok(Some(sig)) => {
                tracing::info!(signal = sig, "stopping tunnel");
                break;
            }
            Ok(None) => {}
            Err(e) => {
                outcome = Err(anyhow::Error::from(e).context("waiting for signals"));
                break;
            }
        }
    }
    sh.stop.store(true, Relaxed);
    for w in workers {
        let r = w.join().map_err(|_| anyhow!("a forwarding thread panicked")).and_then(|r| r.context("forwarding"));
        if outcome.is_ok() {
            outcome = r;
        }
    }
    outcome
}

/// Forwarding threads to run: one per CPU this process may use, at most MAX_QUEUES. A
/// single flow always stays on one thread; more threads serve parallel flows.
const MAX_QUEUES: usize = 4;

/// The sockets and TUN queues, for the fast path if allowed and supported, else for the
/// plain path. A TUN device created single-queue (by `ip tuntap add` without
/// `multi_queue`, say) gets one queue.
fn open_queues(cfg: &TunnelConfig) -> Result<(Vec<Queue>, bool)> {
    let want = cfg.queues.unwrap_or_else(|| crate::sys::ns::cpu_count().min(MAX_QUEUES)).max(1);
    // The flag must match how the device was created, whatever the number of queues.
    let multi = is_multi_queue(&cfg.dev);
    let n = if multi { want } else { 1 };
    if cfg.queues.is_some_and(|q| q > 1) && !multi {
        tracing::warn!("{} was created without multi_queue: one forwarding thread", cfg.dev);
    }
    let socks = UdpSock::bind_group(cfg.local, n).with_context(|| format!("binding UDP {}", cfg.local))?;
    for sock in &socks {
        sock.set_buffers(SOCKET_BUFFER);
        // Never emit fragmented outer datagrams: DF on, oversize sends fail locally.
        sock.set_pmtudisc_do().context("setting IP_PMTUDISC_DO")?;
    }
    if n > 1 {
        socks[0].steer(&steer::program(cfg.wire.prefix().len() as u32, n as u32)).context("attaching the flow-steering program")?;
    }
    let (tuns, offload) = open_datapath(&cfg.dev, cfg.offload, &socks, multi)?;
    Ok((tuns.into_iter().zip(socks).map(|(tun, sock)| Queue { tun, sock }).collect(), offload))
}

/// Whether `dev` takes IFF_MULTI_QUEUE: it does if it does not exist yet (we create it),
/// or was created multi-queue. A probe attach that is dropped at once.
fn is_multi_queue(dev: &str) -> bool {
    TunFd::open(dev, false, true).is_ok()
}

/// One TUN queue per socket, for the fast path if allowed and supported, else for the
/// plain path.
fn open_datapath(dev: &str, mode: OffloadMode, socks: &[UdpSock], multi: bool) -> Result<(Vec<TunFd>, bool)> {
    if mode == OffloadMode::Auto {
        match open_offload(dev, socks, multi) {
            Ok(tuns) => return Ok((tuns, true)),
            Err(e) => tracing::warn!("offload unavailable, using the plain path: {e:#}"),
        }
    }
    let tuns = (0..socks.len())
        .map(|_| TunFd::open(dev, false, multi).with_context(|| format!("attaching to TUN device {dev}")))
        .collect::<Result<Vec<_>>>()?;
    // A persistent device may still carry offload flags from an earlier offload run.
    tuns[0].set_offload(0).with_context(|| format!("clearing offloads on {dev}"))?;
    Ok((tuns, false))
}

fn open_offload(dev: &str, socks: &[UdpSock], multi: bool) -> Result<Vec<TunFd>> {
    let tuns = (0..socks.len())
        .map(|_| TunFd::open(dev, true, multi).with_context(|| format!("attaching to {dev} with IFF_VNET_HDR")))
        .collect::<Result<Vec<_>>>()?;
    tuns[0].set_offload(OFFLOAD_TSO4_CSUM).context("TUNSETOFFLOAD TSO4|CSUM")?;
    for sock in socks {
        sock.probe_gso().context("UDP_SEGMENT")?;
        if let Err(e) = sock.enable_gro() {
            let _ = tuns[0].set_offload(0);
            return Err(anyhow::Error::from(e).context("UDP_GRO"));
        }
    }
    Ok(tuns)
}
