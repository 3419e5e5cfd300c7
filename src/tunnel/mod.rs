//! Stage 4 data plane: a userspace overlay tunnel between nodes. Every inner IPv4 packet
//! read from the TUN device travels as one UDP datagram `local:port → peer:port`, the
//! same wire format as the talk's `socat TUN:... UDP:peer:9000,bind=local:9000`, and
//! every datagram from a peer is checked and written back into the TUN.
//!
//! One thread moves packets in both directions (see forward.rs for why not one per
//! direction); a supervisor thread takes signals and writes counters. When the kernel
//! allows it, the "offload" path (TUN TSO + UDP GSO/GRO) moves 64 KB per syscall instead
//! of one packet; the wire format stays identical. The explicit `gso` wire (`--backend
//! udp-gso`, cnet to cnet over a 64 KB underlay) passes the super-packets whole.

#![forbid(unsafe_code)] // every syscall goes through crate::sys

mod coalesce;
mod forward;
pub mod handshake;
mod packet;
mod peers;
mod rx;
mod segment;
mod stats;
mod tx;
mod vnet;
mod wire;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::sys::term::TermSignals;
use crate::sys::tun::{OFFLOAD_TSO4_CSUM, TunFd};
use crate::sys::udp::{self, UdpSock};
use peers::PeerTable;
use stats::{Counters, DATAPATH_OFFLOAD, DATAPATH_PLAIN, DATAPATH_SUPER};

use crate::model::wire::WireFormat;
pub use stats::{Direction, Drops, Stats};

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
    /// Started by `cnet up` (see [`handshake`]): wait for the go-ahead, report
    /// readiness, and attach only to the device `up` made.
    pub handshake: bool,
}

/// Socket buffer size: room for a few dozen 64 KB trains in flight.
const SOCKET_BUFFER: usize = 8 << 20;
/// How often the counters file is rewritten (a small write to tmpfs): `cnet status` shows
/// counters at most this old.
const STATS_INTERVAL: Duration = Duration::from_millis(250);

/// State the forwarding thread borrows (via a scoped thread) and the supervisor watches.
struct Shared {
    tun: TunFd,
    sock: UdpSock,
    peers: PeerTable,
    offload: bool,
    wire: WireFormat,
    counters: Counters,
    stop: AtomicBool,
}

/// A TUN device just created and not yet persistent: it exists only while this process
/// holds it, so a `cnet up` killed now takes it away. [`NewTun::keep`] makes it outlive us
/// (after the caller has marked it as cnet's).
pub struct NewTun(TunFd);

/// TUNSETIFF with IFF_TUN|IFF_NO_PI: create `name`, held by this process only.
pub fn create_tun(name: &str) -> Result<NewTun> {
    let tun = TunFd::open(name, false).map_err(|e| match e.raw_os_error() {
        // The device file is missing, or no driver answers it: the machine's, not the request's.
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => crate::error::Failure::environment(format!(
            "cannot create TUN device {name}: this machine has no TUN support (/dev/net/tun: {e}); load the tun module (modprobe tun)"
        )),
        _ => anyhow::Error::new(e).context(format!("creating TUN device {name}")),
    })?;
    // TUNSETIFF attaches to a persistent device of that name instead of creating one: that
    // one is not ours to take.
    if tun.is_persistent().with_context(|| format!("reading {name}'s flags"))? {
        bail!("a TUN device named {name} already exists");
    }
    Ok(NewTun(tun))
}

impl NewTun {
    /// TUNSETPERSIST(1): the device now outlives this process, to be configured over netlink
    /// and attached to by the tunnel.
    pub fn keep(self, name: &str) -> Result<()> {
        self.0.set_persist(true).with_context(|| format!("making {name} persistent"))
    }
}

/// Run the tunnel until SIGTERM or SIGINT, then write final stats and return Ok.
/// Must be called before any other thread exists that could take those signals.
pub fn run(cfg: &TunnelConfig) -> Result<()> {
    let peers = PeerTable::new(&cfg.peers)?;
    // Before anything is bound or attached: the starter records our pid, then says go. If
    // it died first, nothing would ever stop us, so we do not start at all.
    let handshake = match cfg.handshake {
        true => match handshake::Handshake::wait_for_go().context("waiting for the starter's go-ahead")? {
            Some(h) => Some(h),
            None => {
                tracing::info!("the starter went away before recording this tunnel: not starting");
                return Ok(());
            }
        },
        false => None,
    };
    // Block the signals before spawning so the worker inherits the mask and only this
    // thread ever sees SIGTERM/SIGINT; and before the offloads are switched on, so that a
    // failure here cannot leave them on.
    let signals = TermSignals::block().context("blocking SIGTERM/SIGINT")?;
    // Test hook: hold back readiness (the first counters), so that a test can interrupt
    // `up` while it waits for the tunnel; a stop signal still ends the tunnel at once.
    if let Some(ms) = std::env::var("CNET_TUNNEL_READY_DELAY_MS").ok().and_then(|v| v.parse().ok())
        && signals.wait(Duration::from_millis(ms)).context("waiting for signals")?.is_some()
    {
        return Ok(());
    }
    let sock = UdpSock::bind(cfg.local).with_context(|| format!("binding UDP {}", cfg.local))?;
    sock.set_buffers(SOCKET_BUFFER);
    // Never emit fragmented outer datagrams: DF on, oversize sends fail locally.
    sock.set_pmtudisc_do().context("setting IP_PMTUDISC_DO")?;
    if cfg.wire == WireFormat::Gso {
        check_gso_paths(cfg)?;
    }
    let (tun, offload) = open_datapath(&cfg.dev, cfg.offload, cfg.wire, &sock)?;
    // TUNSETIFF creates a device that does not exist: if `down` (or a user) deleted tun0
    // before we attached, we have just made a new, unmarked one that nobody would remove.
    // Dropping our fd takes it away again.
    if cfg.handshake && !tun.is_persistent().context("reading the TUN device's flags")? {
        bail!("{} is gone (deleted before the tunnel attached): not starting", cfg.dev);
    }
    let datapath = match (offload, cfg.wire) {
        (true, WireFormat::Gso) => DATAPATH_SUPER,
        (true, _) => DATAPATH_OFFLOAD,
        (false, _) => DATAPATH_PLAIN,
    };
    tracing::info!(dev = %cfg.dev, local = %cfg.local, peers = cfg.peers.len(), datapath, wire = ?cfg.wire, "tunnel running");

    let sh = Shared { tun, sock, peers, offload, wire: cfg.wire, counters: Counters::default(), stop: AtomicBool::new(false) };
    if let Some(p) = &cfg.stats_path {
        stats::write_stats(p, &sh.counters.snapshot(datapath))?;
    }
    if let Some(h) = handshake {
        h.ready().context("telling the starter the tunnel is ready")?;
    }
    let result = thread::scope(|s| supervise(s, &sh, &signals, cfg.stats_path.as_deref(), datapath));
    // The device deleted under us (`down`, or `ip link del tun0`): nothing is left to carry,
    // so the tunnel ends, and ends cleanly — a tunnel never outlives its tun0.
    let result = match result {
        Err(e) if device_gone(&e) => {
            tracing::info!("{} was deleted: the tunnel stops", cfg.dev);
            Ok(())
        }
        r => r,
    };

    if offload {
        // Leave a persistent device as we found it: a later plain reader (socat) must not
        // be handed super-packets.
        let _ = sh.tun.set_offload(0);
    }
    // The final counters, without hiding why the forwarding stopped if that failed.
    let last = cfg.stats_path.as_ref().map_or(Ok(()), |p| stats::write_stats(p, &sh.counters.snapshot(datapath)));
    result.and(last)
}

/// Start the forwarding thread, write stats every STATS_INTERVAL, and stop it on a signal
/// or when it fails.
fn supervise<'s>(
    s: &'s thread::Scope<'s, '_>,
    sh: &'s Shared,
    signals: &TermSignals,
    stats_path: Option<&Path>,
    datapath: &str,
) -> Result<()> {
    let worker = thread::Builder::new().name("forward".into()).spawn_scoped(s, || forward::run(sh))?;
    let mut outcome = Ok(());
    loop {
        if let Some(p) = stats_path
            && let Err(e) = stats::write_stats(p, &sh.counters.snapshot(datapath))
        {
            tracing::warn!("stats: {e:#}");
        }
        if worker.is_finished() {
            break;
        }
        match signals.wait(STATS_INTERVAL) {
            // `cnet status` asks for fresh counters: written at the top of the loop.
            Ok(Some(sig)) if sig == libc::SIGUSR1 => {}
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
    let r = worker.join().map_err(|_| anyhow!("the forwarding thread panicked")).and_then(|r| r.context("forwarding"));
    outcome.and(r)
}

/// Whether forwarding stopped because the TUN device was deleted (reads and writes on its
/// fd then fail with EBADFD).
fn device_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EBADFD))
}

/// The gso wire's datagrams reach 65535 bytes (IP) with DF set: on a smaller path every
/// super-packet would fail to send and TCP would stall without a word, so refuse to start.
fn check_gso_paths(cfg: &TunnelConfig) -> Result<()> {
    let need = 65535;
    for p in &cfg.peers {
        let mtu = udp::path_mtu(*cfg.local.ip(), p.addr).with_context(|| format!("reading the path MTU towards {}", p.addr))?;
        if mtu < need {
            bail!(
                "the gso wire sends datagrams of up to 64 KB, but the path to {} has MTU {mtu}: it needs {need} (the lab's cables with --backend udp-gso); on a real network use --wire raw",
                p.addr
            );
        }
    }
    Ok(())
}

/// Open the TUN for the fast path if allowed and supported, else for the plain path. The
/// gso wire has no plain path: it passes the kernel's super-packets, so without the
/// offloads it refuses to start rather than quietly become the raw wire.
fn open_datapath(dev: &str, mode: OffloadMode, wire: WireFormat, sock: &UdpSock) -> Result<(TunFd, bool)> {
    if wire == WireFormat::Gso {
        if mode == OffloadMode::Off {
            bail!(
                "the gso wire passes TCP super-packets and needs the offload path, but the plain one was asked for (--no-offload, or CNET_TUNNEL_NO_OFFLOAD for `up`): drop that, or use --wire raw"
            );
        }
        let tun = open_offload(dev, sock).context(
            "the gso wire needs TUN offloads and UDP GSO/GRO, which this kernel refuses: use --wire raw (--backend udp)",
        )?;
        return Ok((tun, true));
    }
    if mode == OffloadMode::Auto {
        match open_offload(dev, sock) {
            Ok(tun) => return Ok((tun, true)),
            Err(e) => tracing::warn!("offload unavailable, using the plain path: {e:#}"),
        }
    }
    let tun = TunFd::open(dev, false).with_context(|| format!("attaching to TUN device {dev}"))?;
    // A persistent device may still carry offload flags from an earlier offload run.
    tun.set_offload(0).with_context(|| format!("clearing offloads on {dev}"))?;
    Ok((tun, false))
}

/// UDP_SEGMENT is probed first (it changes nothing); UDP_GRO comes last, because the plain
/// path's small receive buffers must not get coalesced datagrams: only its failure leaves
/// something to undo, the TUN's offloads.
fn open_offload(dev: &str, sock: &UdpSock) -> Result<TunFd> {
    sock.probe_gso().context("UDP_SEGMENT")?;
    let tun = TunFd::open(dev, true).with_context(|| format!("attaching to {dev} with IFF_VNET_HDR"))?;
    tun.set_offload(OFFLOAD_TSO4_CSUM).context("TUNSETOFFLOAD TSO4|CSUM")?;
    if let Err(e) = sock.enable_gro() {
        let _ = tun.set_offload(0);
        return Err(anyhow::Error::from(e).context("UDP_GRO"));
    }
    Ok(tun)
}
