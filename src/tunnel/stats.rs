//! Counters shared between the forwarding thread and the stats writer. Only the forwarding
//! thread writes them (relaxed atomics, no contention); the supervisor only reads. `Stats` is the JSON snapshot written to `stats_path`.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const DATAPATH_OFFLOAD: &str = "offload: TSO+UDP GSO/GRO";
pub const DATAPATH_PLAIN: &str = "plain";
pub const DATAPATH_SUPER: &str = "offload, gso wire: whole TCP super-packets";

/// TUN → UDP counters.
#[derive(Default)]
#[repr(align(64))]
pub struct TxCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub tun_reads: AtomicU64,
    pub udp_sends: AtomicU64,
    pub tun_not_ipv4: AtomicU64,
    pub no_route: AtomicU64,
    pub send_error: AtomicU64,
    pub bad_offload: AtomicU64,
}

/// UDP → TUN counters.
#[derive(Default)]
#[repr(align(64))]
pub struct RxCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub udp_recvs: AtomicU64,
    pub tun_writes: AtomicU64,
    pub unknown_peer: AtomicU64,
    pub truncated: AtomicU64,
    pub malformed: AtomicU64,
    pub not_ipv4: AtomicU64,
    pub spoofed_source: AtomicU64,
    pub tun_write_error: AtomicU64,
}

#[derive(Default)]
pub struct Counters {
    pub tx: TxCounters,
    pub rx: RxCounters,
}

/// Add to a counter. Only the forwarding thread writes, so a plain load and store does:
/// no locked read-modify-write on the data path (the reader may see a value one update old).
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Direction {
    /// Inner IP packets (after segmentation / before coalescing).
    pub packets: u64,
    /// Inner IP bytes.
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Receive: datagram from an address:port that is not a configured peer.
    pub unknown_peer: u64,
    /// Receive: shorter than the IPv4 header / total length, or cut by the buffer.
    pub truncated: u64,
    /// Receive: bad IHL, bad header checksum, length mismatch.
    pub malformed: u64,
    /// Receive: not IPv4 (version nibble != 4).
    pub not_ipv4: u64,
    /// Receive: inner source not inside the sending peer's subnets.
    pub spoofed_source: u64,
    /// Receive: the TUN refused a write.
    pub tun_write_error: u64,
    /// Send: packet read from the TUN is not IPv4 (e.g. IPv6 router solicitations).
    pub tun_not_ipv4: u64,
    /// Send: destination owned by no peer.
    pub no_route: u64,
    /// Send: sendmmsg failed (ECONNREFUSED, EMSGSIZE, ...).
    pub send_error: u64,
    /// Send: offload metadata from the kernel we could not honour.
    pub bad_offload: u64,
    /// Receive (ebpf backend only): a UDP GSO batch — several datagrams behind one header —
    /// that crossed a same-host underlay whole; only a socket can take one apart.
    #[serde(default)]
    pub gso_batch: u64,
}

/// Syscall counts: packets per syscall shows whether batching/offload works.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Syscalls {
    pub tun_reads: u64,
    pub udp_sends: u64,
    pub udp_recvs: u64,
    pub tun_writes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Which data path runs: "offload: TSO+UDP GSO/GRO" or "plain".
    pub datapath: String,
    /// When these counters were read (milliseconds since the Unix epoch), so that a reader
    /// can tell how fresh they are.
    #[serde(default)]
    pub at_ms: u64,
    pub tun_to_udp: Direction,
    pub udp_to_tun: Direction,
    pub drops: Drops,
    pub syscalls: Syscalls,
}

impl Counters {
    pub fn snapshot(&self, datapath: &str) -> Stats {
        let (t, r) = (&self.tx, &self.rx);
        Stats {
            datapath: datapath.to_string(),
            at_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            tun_to_udp: Direction { packets: t.packets.load(Relaxed), bytes: t.bytes.load(Relaxed) },
            udp_to_tun: Direction { packets: r.packets.load(Relaxed), bytes: r.bytes.load(Relaxed) },
            drops: Drops {
                unknown_peer: r.unknown_peer.load(Relaxed),
                truncated: r.truncated.load(Relaxed),
                malformed: r.malformed.load(Relaxed),
                not_ipv4: r.not_ipv4.load(Relaxed),
                spoofed_source: r.spoofed_source.load(Relaxed),
                tun_write_error: r.tun_write_error.load(Relaxed),
                tun_not_ipv4: t.tun_not_ipv4.load(Relaxed),
                no_route: t.no_route.load(Relaxed),
                send_error: t.send_error.load(Relaxed),
                bad_offload: t.bad_offload.load(Relaxed),
                gso_batch: 0,
            },
            syscalls: Syscalls {
                tun_reads: t.tun_reads.load(Relaxed),
                udp_sends: t.udp_sends.load(Relaxed),
                udp_recvs: r.udp_recvs.load(Relaxed),
                tun_writes: r.tun_writes.load(Relaxed),
            },
        }
    }
}

/// Write `stats` as JSON to `path` atomically (temp file in the same dir + rename), so a
/// reader never sees a half-written file.
pub fn write_stats(path: &Path, stats: &Stats) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let json = serde_json::to_vec_pretty(stats)?;
    fs::write(&tmp, json).with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming stats into {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
pub fn read_stats(path: impl AsRef<Path>) -> Result<Stats> {
    let path = path.as_ref();
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_through_file() {
        let c = Counters::default();
        add(&c.tx.packets, 3);
        add(&c.rx.spoofed_source, 2);
        let s = c.snapshot(DATAPATH_PLAIN);
        let dir = std::env::temp_dir().join(format!("tunnel-stats-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("stats.json");
        write_stats(&p, &s).unwrap();
        let back = read_stats(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.tun_to_udp.packets, 3);
        assert_eq!(back.drops.spoofed_source, 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
