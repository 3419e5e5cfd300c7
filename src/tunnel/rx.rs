//! UDP → TUN direction, one batch per `Rx::pump` (driven by forward.rs). recvmmsg fetches a batch of datagrams (with
//! UDP GRO, each may hold many same-size datagrams back to back); each inner packet is
//! checked (known peer, valid IPv4, source inside that peer's subnets) before the TUN
//! sees it. On the offload path consecutive TCP segments are merged into super-packets.
//! On the gso wire a datagram may instead carry a whole super-packet with the sender's
//! virtio_net_hdr: both are checked (packet::validate_super) and written as they came.

use std::io;

use anyhow::{Context, Result};

use super::Shared;
use super::coalesce::{Coalescer, Emit, PLAIN_HDR};
use super::packet::{Invalid, validate_ipv4, validate_super};
use super::stats::{RxCounters, add};
use super::wire::{self, Frame, WireFormat};
use crate::sys::tun::TunFd;
use crate::sys::udp::RecvBatch;

/// Offload: few big buffers (a GRO batch is up to 64 KB). Plain: many small ones, still
/// big enough for a jumbo-frame underlay.
const OFFLOAD_BATCH: (usize, usize) = (16, 65536);
const PLAIN_BATCH: (usize, usize) = (64, 16384);

/// The UDP → TUN direction's buffers; `pump` moves one batch.
pub struct Rx<'a> {
    sh: &'a Shared,
    batch: RecvBatch,
    coalescer: Option<Coalescer>,
}

impl<'a> Rx<'a> {
    pub fn new(sh: &'a Shared) -> Self {
        let (cap, size) = if sh.offload { OFFLOAD_BATCH } else { PLAIN_BATCH };
        Rx { sh, batch: RecvBatch::new(cap, size), coalescer: if sh.offload { Some(Coalescer::new()) } else { None } }
    }

    /// Receive one batch of datagrams and write their packets into the TUN.
    /// Ok(false) when no datagram was waiting.
    pub fn pump(&mut self) -> Result<bool> {
        let Rx { sh, batch, coalescer } = self;
        let sh: &Shared = sh;
        let c = &sh.counters.rx;
        let mut emit = |e: Emit<'_>| write_tun(&sh.tun, c, e);
        let n = match batch.recv(&sh.sock) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            // Errors queued by ICMP (e.g. ECONNREFUSED) surface here on some kernels
            // even for unconnected sockets; they are about sends, not receives.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNREFUSED | libc::EINTR | libc::EHOSTUNREACH | libc::ENETUNREACH)
                ) =>
            {
                return Ok(true);
            }
            Err(e) => return Err(e).context("receiving from the UDP socket"),
        };
        add(&c.udp_recvs, 1);
        for i in 0..n {
            let m = batch.get(i);
            let step = m.gro_size.map_or(m.data.len(), |s| s as usize).max(1);
            let count = m.data.len().div_ceil(step).max(1) as u64;
            let Some(peer) = sh.peers.by_addr(m.src) else {
                add(&c.unknown_peer, count);
                continue;
            };
            if m.truncated {
                add(&c.truncated, count);
                continue;
            }
            for datagram in m.data.chunks(step) {
                match wire::parse(datagram) {
                    // Whole super-packets only where both ends chose the gso wire.
                    Ok(Frame::Super { .. }) if sh.wire != WireFormat::Gso => add(&c.malformed, 1),
                    Ok(Frame::Super { hdr, pkt }) => match validate_super(hdr, pkt) {
                        Err(e) => count_invalid(c, e),
                        Ok(s) if !sh.peers.owns(peer, s.meta.src) => add(&c.spoofed_source, 1),
                        Ok(s) => {
                            // Keep order with packets merged before it.
                            if let Some(co) = coalescer.as_mut() {
                                co.flush(&mut emit);
                            }
                            emit(Emit { hdr, pkt, segments: s.segments, inner_bytes: s.inner_bytes });
                        }
                    },
                    Ok(Frame::Packet(pkt)) => match validate_ipv4(pkt) {
                        Err(e) => count_invalid(c, e),
                        Ok(meta) if !sh.peers.owns(peer, meta.src) => add(&c.spoofed_source, 1),
                        Ok(_) => match coalescer.as_mut() {
                            Some(co) => co.push(pkt, &mut emit),
                            None => emit(Emit { hdr: &PLAIN_HDR, pkt, segments: 1, inner_bytes: pkt.len() as u64 }),
                        },
                    },
                    Err(e) => count_invalid(c, e),
                }
            }
            // An empty datagram has no chunks at all.
            if m.data.is_empty() {
                add(&c.truncated, 1);
            }
        }
        if let Some(co) = coalescer.as_mut() {
            co.flush(&mut emit);
        }
        Ok(true)
    }
}

fn count_invalid(c: &RxCounters, e: Invalid) {
    add(
        match e {
            Invalid::Truncated => &c.truncated,
            Invalid::Malformed => &c.malformed,
            Invalid::NotIpv4 => &c.not_ipv4,
        },
        1,
    );
}

/// One TUN write (with the vnet header only if the TUN expects it).
fn write_tun(tun: &TunFd, c: &RxCounters, e: Emit<'_>) {
    let res = if tun.has_vnet_hdr() { tun.write2(e.hdr, e.pkt) } else { tun.write(e.pkt) };
    add(&c.tun_writes, 1);
    match res {
        Ok(_) => {
            add(&c.packets, e.segments);
            add(&c.bytes, e.inner_bytes);
        }
        Err(err) => {
            add(&c.tun_write_error, e.segments);
            tracing::debug!(error = %err, "TUN write failed");
        }
    }
}
