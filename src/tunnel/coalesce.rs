//! Receive side of the offload path: merge consecutive in-order TCP segments of one flow
//! (as they arrive in a UDP GRO batch) into one super-packet written to the TUN with a
//! GSO_TCPV4 virtio_net_hdr. The kernel then handles it like a GRO packet: one trip
//! through the stack instead of ~45, and one TUN write instead of ~45.
//!
//! The merge rules mirror the kernel's tcp_gro_receive: same addresses, ports, ack,
//! window, header length and options; sequence numbers contiguous; every segment but the
//! last carries exactly `mss` payload bytes; only ACK (and PSH on the last) flags.
//! Anything else is passed through unchanged with an all-zero vnet header.

use super::packet::PROTO_TCP;
use super::vnet::{self, VnetHdr};
use crate::checksum;

const MAX_IP_LEN: usize = u16::MAX as usize;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// The zero vnet header for a packet needing no offload work.
pub const PLAIN_HDR: [u8; vnet::LEN] = [0; vnet::LEN];

/// What the TUN writer gets: header, packet, and how many inner packets/bytes it holds.
pub struct Emit<'a> {
    pub hdr: &'a [u8; vnet::LEN],
    pub pkt: &'a [u8],
    pub segments: u64,
    pub inner_bytes: u64,
}

pub struct Coalescer {
    buf: Box<[u8]>,
    /// Bytes of the pending packet in `buf`; 0 when nothing is pending.
    len: usize,
    hlen: usize,
    mss: usize,
    segs: u64,
    inner_bytes: u64,
    next_seq: u32,
}

/// What we need from a TCP segment that may be merged.
struct Candidate {
    hlen: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

/// A validated IPv4 packet is a merge candidate if it is unfragmented TCP without IP
/// options, carries payload, and has only ACK (+PSH) set.
fn candidate(pkt: &[u8]) -> Option<Candidate> {
    if pkt[0] != 0x45 || pkt[9] != PROTO_TCP || pkt.len() < 40 {
        return None;
    }
    // MF flag or a fragment offset: leave fragments alone.
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return None;
    }
    let thl = ((pkt[32] >> 4) as usize) * 4;
    let hlen = 20 + thl;
    if thl < 20 || pkt.len() <= hlen {
        return None;
    }
    let flags = pkt[33];
    if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
        return None;
    }
    Some(Candidate {
        hlen,
        payload: pkt.len() - hlen,
        seq: u32::from_be_bytes([pkt[24], pkt[25], pkt[26], pkt[27]]),
        psh: flags & TCP_PSH != 0,
    })
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer { buf: vec![0u8; MAX_IP_LEN].into_boxed_slice(), len: 0, hlen: 0, mss: 0, segs: 0, inner_bytes: 0, next_seq: 0 }
    }

    /// Offer one validated IPv4 packet. Emits zero, one or two packets through `emit`.
    pub fn push<E: FnMut(Emit<'_>)>(&mut self, pkt: &[u8], emit: &mut E) {
        let Some(c) = candidate(pkt) else {
            self.flush(emit);
            emit(Emit { hdr: &PLAIN_HDR, pkt, segments: 1, inner_bytes: pkt.len() as u64 });
            return;
        };
        if self.len > 0 && self.fits(pkt, &c) {
            self.buf[self.len..self.len + c.payload].copy_from_slice(&pkt[c.hlen..]);
            self.len += c.payload;
            self.segs += 1;
            self.inner_bytes += pkt.len() as u64;
            self.next_seq = c.seq.wrapping_add(c.payload as u32);
            if c.psh {
                self.buf[33] |= TCP_PSH;
            }
            // A short segment or PSH ends the train: nothing may follow it.
            if c.psh || c.payload < self.mss {
                self.flush(emit);
            }
            return;
        }
        self.flush(emit);
        if c.psh {
            emit(Emit { hdr: &PLAIN_HDR, pkt, segments: 1, inner_bytes: pkt.len() as u64 });
            return;
        }
        self.buf[..pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.hlen = c.hlen;
        self.mss = c.payload;
        self.segs = 1;
        self.inner_bytes = pkt.len() as u64;
        self.next_seq = c.seq.wrapping_add(c.payload as u32);
    }

    /// Can `pkt` be appended to the pending super-packet?
    fn fits(&self, pkt: &[u8], c: &Candidate) -> bool {
        let b = &self.buf;
        c.hlen == self.hlen
            && c.payload <= self.mss
            && self.len + c.payload <= MAX_IP_LEN
            && c.seq == self.next_seq
            // version/IHL, TOS; DF; TTL, protocol; addresses
            && pkt[..2] == b[..2]
            && pkt[6] & 0x40 == b[6] & 0x40
            && pkt[8..10] == b[8..10]
            && pkt[12..20] == b[12..20]
            // ports; ack number; data offset; window; options
            && pkt[20..24] == b[20..24]
            && pkt[28..33] == b[28..33]
            && pkt[34..36] == b[34..36]
            && pkt[40..c.hlen] == b[40..self.hlen]
    }

    /// Write out whatever is pending.
    pub fn flush<E: FnMut(Emit<'_>)>(&mut self, emit: &mut E) {
        if self.len == 0 {
            return;
        }
        let len = std::mem::take(&mut self.len);
        if self.segs == 1 {
            // Untouched single segment: its checksums are still the sender's.
            emit(Emit { hdr: &PLAIN_HDR, pkt: &self.buf[..len], segments: 1, inner_bytes: self.inner_bytes });
            return;
        }
        let p = &mut self.buf[..len];
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        super::packet::fix_ip_checksum(&mut p[..20]);
        // CHECKSUM_PARTIAL convention: the TCP checksum field holds the folded, not
        // complemented, pseudo-header sum for the whole super-packet; the kernel adjusts
        // it per segment when (if ever) it re-segments.
        let src: [u8; 4] = p[12..16].try_into().unwrap();
        let dst: [u8; 4] = p[16..20].try_into().unwrap();
        let partial = checksum::fold(checksum::pseudo_header(src, dst, PROTO_TCP, (len - 20) as u16));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV4,
            hdr_len: self.hlen as u16,
            gso_size: self.mss as u16,
            csum_start: 20,
            csum_offset: 16,
        }
        .encode();
        emit(Emit { hdr: &hdr, pkt: p, segments: self.segs, inner_bytes: self.inner_bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::segment::tests::{tcp_checksum_ok, tcp4};
    use crate::tunnel::segment::{complete_checksum, segment_tcp4};

    struct Out {
        hdr: [u8; vnet::LEN],
        pkt: Vec<u8>,
        segs: u64,
    }

    fn run(pkts: &[Vec<u8>]) -> Vec<Out> {
        let mut c = Coalescer::new();
        let mut out = Vec::new();
        let mut emit = |e: Emit<'_>| out.push(Out { hdr: *e.hdr, pkt: e.pkt.to_vec(), segs: e.segments });
        for p in pkts {
            c.push(p, &mut emit);
        }
        c.flush(&mut emit);
        out
    }

    fn split(sp: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; 100_000];
        let s = segment_tcp4(sp, mss, &[], &mut buf).unwrap();
        (0..s.count).map(|i| buf[i * s.seg_len..((i + 1) * s.seg_len).min(s.total)].to_vec()).collect()
    }

    #[test]
    fn merges_a_train_and_resegments_identically() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 13) as u8).collect();
        let sp = tcp4(42, TCP_ACK | TCP_PSH, &payload);
        let segs = split(&sp, 1000);
        let out = run(&segs);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].segs, 10);
        let h = VnetHdr::decode(&out[0].hdr).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len, h.flags), (vnet::GSO_TCPV4, 1000, 52, vnet::F_NEEDS_CSUM));
        assert_eq!(&out[0].pkt[52..], &payload[..]);
        assert_eq!(out[0].pkt[33] & TCP_PSH, TCP_PSH);
        crate::tunnel::packet::validate_ipv4(&out[0].pkt).unwrap();
        // Splitting the merged packet again (as the kernel would) gives the original segments.
        let mut again = out[0].pkt.clone();
        complete_checksum(&mut again, 20, 16).unwrap();
        assert!(tcp_checksum_ok(&again));
        let resplit = split(&again, 1000);
        for (a, b) in resplit.iter().zip(&segs) {
            assert_eq!(&a[20..], &b[20..], "tcp part identical");
        }
    }

    #[test]
    fn breaks_on_gap_flags_and_flows() {
        let a = tcp4(0, TCP_ACK, &[1u8; 100]);
        let b = tcp4(100, TCP_ACK, &[2u8; 100]);
        let gap = tcp4(300, TCP_ACK, &[3u8; 100]);
        let syn = tcp4(400, 0x02, &[]);
        let mut other = tcp4(400, TCP_ACK, &[4u8; 100]);
        other[21] ^= 1; // different source port (checksum irrelevant here)
        let out = run(&[a, b, gap, syn, other]);
        let segs: Vec<u64> = out.iter().map(|o| o.segs).collect();
        assert_eq!(segs, vec![2, 1, 1, 1]);
        assert_eq!(out[1].hdr, PLAIN_HDR);
        assert_eq!(out[2].hdr, PLAIN_HDR);
    }

    #[test]
    fn short_segment_ends_train_and_non_tcp_passes() {
        let a = tcp4(0, TCP_ACK, &[1u8; 100]);
        let b = tcp4(100, TCP_ACK, &[2u8; 50]);
        let c = tcp4(150, TCP_ACK, &[3u8; 100]);
        let icmp = crate::tunnel::packet::tests::ipv4([172, 16, 0, 2], [172, 16, 1, 2], 1, b"ping");
        let out = run(&[a, b, c, icmp.clone()]);
        let segs: Vec<u64> = out.iter().map(|o| o.segs).collect();
        assert_eq!(segs, vec![2, 1, 1]);
        assert_eq!(out[2].pkt, icmp);
    }
}
