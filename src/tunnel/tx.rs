//! TUN → UDP direction, one batch per `Tx::pump` (driven by forward.rs). Reads packets from the TUN until it runs dry or
//! the send buffer fills, then ships the whole batch with one sendmmsg. On the offload
//! path each read may be a 64 KB TCP super-packet, cut into MTU-sized inner packets and
//! sent as UDP GSO trains (one sendmmsg entry carries up to 64 datagrams). On the gso
//! wire a super-packet is sent whole instead, as one datagram.

use std::io;
use std::net::SocketAddrV4;

use anyhow::{Context, Result};

use super::Shared;
use super::packet::validate_super;
use super::segment::{self, Segments};
use super::stats::add;
use super::vnet::{self, VnetHdr};
use super::wire::{GSO_MAGIC, WireFormat};
use crate::sys::udp::{SendBatch, SendItem};

/// Send buffer; refilled from the start for every batch.
const SBUF: usize = 640 * 1024;
/// Stop reading when less than this is free: the worst-case segmented super-packet
/// (64 KB payload + a 120-byte header per small segment) must still fit.
const SBUF_RESERVE: usize = 200 * 1024;
/// Largest packet a TUN read can return (IP total length limit) plus the vnet header.
const RBUF: usize = vnet::LEN + 65536;
const MAX_ITEMS: usize = 128;
/// Largest UDP payload in one GSO send (IP length limit) and the kernel's segment cap.
const GSO_MAX_BYTES: usize = 65507;
const GSO_MAX_SEGS: usize = 64;

/// The TUN → UDP direction's buffers; `pump` moves one batch.
pub struct Tx<'a> {
    sh: &'a Shared,
    rbuf: Vec<u8>,
    sbuf: Vec<u8>,
    items: Vec<SendItem>,
    /// Gso wire: (packets, bytes) each whole super-packet stands for, in the order of the
    /// items that carry them (counted once, when validated at staging).
    supers: Vec<Tally>,
    batch: SendBatch,
}

/// Inner packets and their bytes (framing excluded) that one send item carries.
type Tally = (u64, u64);

impl<'a> Tx<'a> {
    pub fn new(sh: &'a Shared) -> Self {
        Tx {
            sh,
            rbuf: vec![0u8; if sh.offload { RBUF } else { 0 }],
            sbuf: vec![0u8; SBUF],
            items: Vec::with_capacity(MAX_ITEMS),
            supers: Vec::with_capacity(MAX_ITEMS),
            batch: SendBatch::new(MAX_ITEMS),
        }
    }

    /// Read the TUN until it runs dry or the send buffer fills, then send the batch.
    /// Ok(false) when there was nothing to read.
    pub fn pump(&mut self) -> Result<bool> {
        let Tx { sh, rbuf, sbuf, items, supers, batch } = self;
        let sh: &Shared = sh;
        let c = &sh.counters.tx;
        let pre = sh.wire.prefix();
        items.clear();
        supers.clear();
        let mut used = 0;
        let mut idle = true;
        while items.len() + 2 <= MAX_ITEMS && SBUF - used >= SBUF_RESERVE {
            let res = match (sh.offload, sh.wire) {
                // A super-packet goes out as read, behind the gso magic: read it in place.
                (true, WireFormat::Gso) => sh.tun.read(&mut sbuf[used + GSO_MAGIC.len()..][..RBUF]),
                (true, _) => sh.tun.read(rbuf),
                (false, _) => sh.tun.read(&mut sbuf[used + pre.len()..]),
            };
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading from the TUN device"),
            };
            idle = false;
            add(&c.tun_reads, 1);
            if sh.offload && sh.wire == WireFormat::Gso {
                used += stage_super(sh, n, sbuf, used, rbuf, items, supers);
            } else if sh.offload {
                used += stage_offload(sh, &mut rbuf[..n], &mut sbuf[used..], used, items);
            } else {
                used += stage_plain(sh, &mut sbuf[used..used + pre.len() + n], used, items);
            }
        }
        if !idle {
            send_all(sh, sbuf, items, supers, batch);
        }
        Ok(!idle)
    }
}

/// Queue one plain packet read into `dgram` after room for the wire prefix (`dgram`
/// is `sbuf[at..]`); returns bytes consumed.
fn stage_plain(sh: &Shared, dgram: &mut [u8], at: usize, items: &mut Vec<SendItem>) -> usize {
    let pre = sh.wire.prefix();
    let Some(peer) = route(sh, &dgram[pre.len()..], 1) else { return 0 };
    dgram[..pre.len()].copy_from_slice(pre);
    items.push(SendItem { dst: sh.peers.addr(peer), start: at, len: dgram.len(), gso_size: 0 });
    dgram.len()
}

/// Find the peer for an IPv4 packet read from the TUN, counting drops.
fn route(sh: &Shared, pkt: &[u8], packets: u64) -> Option<usize> {
    let c = &sh.counters.tx;
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        add(&c.tun_not_ipv4, packets);
        return None;
    }
    let peer = sh.peers.route(super::packet::dst(pkt));
    if peer.is_none() {
        add(&c.no_route, packets);
    }
    peer
}

/// Gso wire: the vnet-framed TUN read of `n` bytes at `sbuf[at + 4..]` goes out whole as
/// one datagram, behind GSO_MAGIC; returns bytes consumed in the send buffer. One the
/// peer's checks would refuse, or too big for a datagram (a 64 KB packet from a sender
/// allowed bigger GSO than ours), is cut into ordinary packets instead, which the peer
/// accepts as well.
fn stage_super(
    sh: &Shared,
    n: usize,
    sbuf: &mut [u8],
    at: usize,
    rbuf: &mut [u8],
    items: &mut Vec<SendItem>,
    supers: &mut Vec<Tally>,
) -> usize {
    let len = GSO_MAGIC.len() + n;
    let read = &sbuf[at + GSO_MAGIC.len()..at + len];
    let checked = match read.split_first_chunk::<{ vnet::LEN }>() {
        Some((hdr, pkt)) if len <= GSO_MAX_BYTES => validate_super(hdr, pkt).ok(),
        _ => None,
    };
    let Some(s) = checked else {
        rbuf[..n].copy_from_slice(read);
        return stage_offload(sh, &mut rbuf[..n], &mut sbuf[at..], at, items);
    };
    let Some(peer) = route(sh, &read[vnet::LEN..], 1) else { return 0 };
    sbuf[at..at + GSO_MAGIC.len()].copy_from_slice(&GSO_MAGIC);
    items.push(SendItem { dst: sh.peers.addr(peer), start: at, len, gso_size: 0 });
    supers.push((s.segments, s.inner_bytes));
    len
}

/// Turn one vnet-framed TUN read into wire packets at `out` (= sbuf[at..]); returns
/// bytes consumed in the send buffer.
fn stage_offload(sh: &Shared, frame: &mut [u8], out: &mut [u8], at: usize, items: &mut Vec<SendItem>) -> usize {
    let c = &sh.counters.tx;
    let Some(h) = VnetHdr::decode(frame) else {
        add(&c.bad_offload, 1);
        return 0;
    };
    let pkt = &mut frame[vnet::LEN..];
    match h.gso_type & !vnet::GSO_ECN {
        vnet::GSO_NONE => {
            if h.flags & vnet::F_NEEDS_CSUM != 0
                && segment::complete_checksum(pkt, h.csum_start as usize, h.csum_offset as usize).is_err()
            {
                add(&c.bad_offload, 1);
                return 0;
            }
            let Some(peer) = route(sh, pkt, 1) else { return 0 };
            let pre = sh.wire.prefix();
            let len = pre.len() + pkt.len();
            out[..pre.len()].copy_from_slice(pre);
            out[pre.len()..len].copy_from_slice(pkt);
            items.push(SendItem { dst: sh.peers.addr(peer), start: at, len, gso_size: 0 });
            len
        }
        vnet::GSO_TCPV4 => {
            let mss = h.gso_size as usize;
            let Some(peer) = route(sh, pkt, 1) else { return 0 };
            let Segments { seg_len, count, total } = match segment::segment_tcp4(pkt, mss, sh.wire.prefix(), out) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(?e, "cannot segment TSO packet");
                    add(&c.bad_offload, 1);
                    return 0;
                }
            };
            let dst = sh.peers.addr(peer);
            if count == 1 {
                items.push(SendItem { dst, start: at, len: total, gso_size: 0 });
                return total;
            }
            push_train(items, dst, at, total, seg_len);
            total
        }
        _ => {
            // We only enabled TSO4; anything else (UDP/TCPv6 GSO) is unexpected.
            add(&c.bad_offload, 1);
            0
        }
    }
}

/// Queue `total` bytes of back-to-back datagrams of `seg_len` (the last may be shorter) at
/// `sbuf[at..]` as UDP GSO trains, one per sendmmsg entry, bounded by the UDP length and
/// segment caps. A train may continue the previous item when that one is contiguous,
/// goes to the same peer with the same datagram size and has no short tail: a 64 KB TSO
/// packet is ~46 datagrams but a train holds at most ~44, so cutting trains per
/// super-packet would send a 2-datagram train after every full one.
fn push_train(items: &mut Vec<SendItem>, dst: SocketAddrV4, at: usize, total: usize, seg_len: usize) {
    let max = (GSO_MAX_BYTES / seg_len).clamp(1, GSO_MAX_SEGS) * seg_len;
    let mut off = 0;
    if let Some(last) = items.last_mut()
        && last.dst == dst
        && last.gso_size as usize == seg_len
        && last.start + last.len == at
        && last.len % seg_len == 0
        && last.len < max
    {
        off = (max - last.len).min(total);
        last.len += off;
    }
    while off < total {
        let len = max.min(total - off);
        items.push(SendItem { dst, start: at + off, len, gso_size: seg_len as u16 });
        off += len;
    }
}

/// sendmmsg every item; a failing item is counted and skipped, the rest still go out.
/// Super-packet items (gso wire) are counted from `supers`, in order; the others from
/// their length and datagram size.
fn send_all(sh: &Shared, sbuf: &[u8], items: &[SendItem], supers: &[Tally], batch: &mut SendBatch) {
    let c = &sh.counters.tx;
    let pre = sh.wire.prefix().len() as u64;
    let mut next_super = supers.iter();
    let mut tally = |it: &SendItem| -> Tally {
        if sh.wire == WireFormat::Gso && sbuf[it.start..].starts_with(&GSO_MAGIC) {
            return next_super.next().copied().unwrap_or((1, it.len as u64));
        }
        let p = if it.gso_size == 0 { 1 } else { it.len.div_ceil(it.gso_size as usize) as u64 };
        (p, it.len as u64 - p * pre)
    };
    let mut i = 0;
    while i < items.len() {
        match batch.send(&sh.sock, sbuf, &items[i..]) {
            Ok(k) => {
                add(&c.udp_sends, 1);
                for it in &items[i..i + k] {
                    let (packets, bytes) = tally(it);
                    add(&c.packets, packets);
                    add(&c.bytes, bytes);
                }
                i += k.max(1);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // ECONNREFUSED (peer not up yet), EMSGSIZE, ENETUNREACH...: count, go on.
                add(&c.udp_sends, 1);
                add(&c.send_error, tally(&items[i]).0);
                tracing::debug!(error = %e, peer = %items[i].dst, "send failed");
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn trains(items: &[SendItem]) -> Vec<(usize, usize)> {
        items.iter().map(|i| (i.start, i.len)).collect()
    }

    #[test]
    fn trains_continue_across_super_packets() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 20), 9000);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 30), 9000);
        let seg = 1472; // 44 per train
        let mut items = Vec::new();
        push_train(&mut items, a, 0, 46 * seg, seg);
        assert_eq!(trains(&items), vec![(0, 44 * seg), (44 * seg, 2 * seg)]);
        // The next super-packet to the same peer fills the 2-datagram train first.
        push_train(&mut items, a, 46 * seg, 46 * seg, seg);
        assert_eq!(trains(&items), vec![(0, 44 * seg), (44 * seg, 44 * seg), (88 * seg, 4 * seg)]);
        // A short tail ends the train; so does another peer or another size.
        push_train(&mut items, a, 92 * seg, 3 * seg - 100, seg);
        assert_eq!(items.len(), 3);
        let end = 95 * seg - 100;
        push_train(&mut items, a, end, 2 * seg, seg);
        assert_eq!(items.len(), 4);
        push_train(&mut items, b, end + 2 * seg, 2 * seg, seg);
        push_train(&mut items, b, end + 4 * seg, 2 * 1000, 1000);
        assert_eq!(items.len(), 6);
        assert!(items.iter().all(|i| i.len <= GSO_MAX_BYTES && i.len.div_ceil(i.gso_size as usize) <= GSO_MAX_SEGS));
    }
}
