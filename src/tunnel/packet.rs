//! IPv4 header parsing and validation of packets arriving from the underlay: the tunnel
//! writes only well-formed IPv4 into the TUN, so the kernel never sees garbage from the wire.

use std::net::Ipv4Addr;

use super::vnet::{self, VnetHdr};
use crate::checksum;

pub const IPV4_MIN_HDR: usize = 20;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Why a received payload was not written to the TUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Shorter than its IPv4 header or its own total length.
    Truncated,
    /// IHL < 5, total length shorter than the datagram, or bad header checksum.
    Malformed,
    /// Version nibble is not 4 (IPv6, garbage).
    NotIpv4,
}

/// Addresses of a validated IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Meta {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Full validation of one inner packet that must fill `pkt` exactly.
pub fn validate_ipv4(pkt: &[u8]) -> Result<Ipv4Meta, Invalid> {
    let Some(&b0) = pkt.first() else { return Err(Invalid::Truncated) };
    if b0 >> 4 != 4 {
        return Err(Invalid::NotIpv4);
    }
    if pkt.len() < IPV4_MIN_HDR {
        return Err(Invalid::Truncated);
    }
    let ihl = ((b0 & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HDR {
        return Err(Invalid::Malformed);
    }
    if pkt.len() < ihl {
        return Err(Invalid::Truncated);
    }
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    if total < ihl {
        return Err(Invalid::Malformed);
    }
    if total > pkt.len() {
        return Err(Invalid::Truncated);
    }
    if total < pkt.len() {
        // Trailing bytes after the IP packet: not what a tunnel peer sends.
        return Err(Invalid::Malformed);
    }
    if checksum::checksum(&pkt[..ihl]) != 0 {
        return Err(Invalid::Malformed);
    }
    Ok(Ipv4Meta { src: src(pkt), dst: dst(pkt) })
}

/// Source address; caller guarantees `pkt.len() >= 20`.
pub fn src(pkt: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15])
}

/// Destination address; caller guarantees `pkt.len() >= 20`.
pub fn dst(pkt: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19])
}

/// A validated `Gso` frame's packet: its addresses and the ordinary packets it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuperMeta {
    pub meta: Ipv4Meta,
    /// Packets the kernel will cut it into (1 when it is not a super-packet).
    pub segments: u64,
    /// Their bytes together, each with its own headers (what the plain path would carry).
    pub inner_bytes: u64,
}

/// Smallest segment size TCP sends (Linux's TCP_MIN_SND_MSS): a smaller gso_size would let
/// one datagram stand for tens of thousands of packets.
const MIN_GSO_SIZE: u16 = 48;

/// Validate a packet that arrived whole with the sender's virtio_net_hdr (`Gso` wire)
/// before it is written into the TUN with that header. The header comes from the network,
/// so only what a TUN read itself hands out passes: the IPv4 header checked as for any
/// packet; no offload, or TCPv4 segmentation (ECN allowed) of an unfragmented TCP packet
/// at no less than 48 bytes a segment; a partial checksum only as the kernel leaves it,
/// the TCP or UDP checksum field right after the IPv4 header (mandatory for TCPv4, whose
/// segments the kernel must checksum); header lengths inside the packet. Older kernels
/// trust these fields further than they should, so nothing else reaches them.
pub fn validate_super(hdr: &[u8; vnet::LEN], pkt: &[u8]) -> Result<SuperMeta, Invalid> {
    let meta = validate_ipv4(pkt)?;
    let h = VnetHdr::decode(hdr).ok_or(Invalid::Truncated)?;
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    let proto = pkt[9];
    if h.flags & !(vnet::F_NEEDS_CSUM | vnet::F_DATA_VALID) != 0 || h.hdr_len as usize > pkt.len() {
        return Err(Invalid::Malformed);
    }
    let needs_csum = h.flags & vnet::F_NEEDS_CSUM != 0;
    if needs_csum {
        let offset = match proto {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            _ => return Err(Invalid::Malformed),
        };
        if h.csum_start as usize != ihl || h.csum_offset != offset || ihl + offset as usize + 2 > pkt.len() {
            return Err(Invalid::Malformed);
        }
    }
    match h.gso_type {
        vnet::GSO_NONE => Ok(SuperMeta { meta, segments: 1, inner_bytes: pkt.len() as u64 }),
        t if t & !vnet::GSO_ECN == vnet::GSO_TCPV4 => {
            let fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0;
            if proto != PROTO_TCP || fragment || !needs_csum || h.gso_size < MIN_GSO_SIZE || pkt.len() < ihl + 20 {
                return Err(Invalid::Malformed);
            }
            let hlen = ihl + ((pkt[ihl + 12] >> 4) as usize) * 4;
            if hlen < ihl + 20 || hlen > pkt.len() {
                return Err(Invalid::Malformed);
            }
            let payload = pkt.len() - hlen;
            let segments = payload.div_ceil(h.gso_size as usize).max(1);
            Ok(SuperMeta { meta, segments: segments as u64, inner_bytes: (payload + segments * hlen) as u64 })
        }
        _ => Err(Invalid::Malformed),
    }
}

/// Recompute the IPv4 header checksum in place.
pub fn fix_ip_checksum(hdr: &mut [u8]) {
    hdr[10] = 0;
    hdr[11] = 0;
    let c = checksum::checksum(hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid IPv4 header + payload for tests.
    pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        fix_ip_checksum(&mut p[..20]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn accepts_valid() {
        let p = ipv4([172, 16, 1, 2], [172, 16, 0, 2], 1, b"ping");
        let m = validate_ipv4(&p).unwrap();
        assert_eq!(m.src, Ipv4Addr::new(172, 16, 1, 2));
        assert_eq!(m.dst, Ipv4Addr::new(172, 16, 0, 2));
    }

    #[test]
    fn rejects_by_reason() {
        let p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1, b"abcdefgh");
        assert_eq!(validate_ipv4(&[]), Err(Invalid::Truncated));
        assert_eq!(validate_ipv4(&p[..10]), Err(Invalid::Truncated));
        assert_eq!(validate_ipv4(&p[..24]), Err(Invalid::Truncated));
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert_eq!(validate_ipv4(&v6), Err(Invalid::NotIpv4));
        assert_eq!(validate_ipv4(b"hello garbage"), Err(Invalid::NotIpv4));
        let mut bad = p.clone();
        bad[8] = 1; // TTL changed, checksum stale
        assert_eq!(validate_ipv4(&bad), Err(Invalid::Malformed));
        let mut ihl = p.clone();
        ihl[0] = 0x44;
        assert_eq!(validate_ipv4(&ihl), Err(Invalid::Malformed));
        let mut long = p.clone();
        long.push(0);
        assert_eq!(validate_ipv4(&long), Err(Invalid::Malformed));
    }

    #[test]
    fn validates_super_packets() {
        let sp = crate::tunnel::segment::tests::tcp4(1, 0x10, &[7u8; 3000]); // 20 + 32 + 3000
        let hdr = |flags, gso_type, gso_size, csum_start, csum_offset| {
            VnetHdr { flags, gso_type, hdr_len: 52, gso_size, csum_start, csum_offset }.encode()
        };
        let tso = |gso_size, csum_start, csum_offset| hdr(vnet::F_NEEDS_CSUM, vnet::GSO_TCPV4, gso_size, csum_start, csum_offset);
        let m = validate_super(&tso(1400, 20, 16), &sp).unwrap();
        assert_eq!((m.segments, m.inner_bytes), (3, 3000 + 3 * 52));
        assert_eq!(m.meta.dst, Ipv4Addr::new(172, 16, 1, 2));
        assert!(validate_super(&hdr(vnet::F_NEEDS_CSUM, vnet::GSO_TCPV4 | vnet::GSO_ECN, 1400, 20, 16), &sp).is_ok());
        // A plain packet with a zero header, or with its TCP checksum left partial, is one packet.
        let plain = validate_super(&[0; vnet::LEN], &sp).unwrap();
        assert_eq!((plain.segments, plain.inner_bytes), (1, sp.len() as u64));
        assert!(validate_super(&hdr(vnet::F_NEEDS_CSUM, vnet::GSO_NONE, 0, 20, 16), &sp).is_ok());
        // Refused: a checksum anywhere but the TCP field, TCPv4 without a partial checksum,
        // unknown flags, ECN without TCPv4, TCPv6, tiny or zero segments, a header length
        // past the end, TCP segmentation of a UDP packet.
        for bad in [
            tso(1400, 20, 3100),
            tso(1400, 4, 16),
            tso(1400, 52, 16),
            hdr(vnet::F_NEEDS_CSUM, vnet::GSO_NONE, 0, 20, 6),
            hdr(0, vnet::GSO_TCPV4, 1400, 0, 0),
            hdr(0x80, vnet::GSO_TCPV4, 1400, 20, 16),
            hdr(0, vnet::GSO_ECN, 0, 0, 0),
            hdr(vnet::F_NEEDS_CSUM, 4, 1400, 20, 16), // VIRTIO_NET_HDR_GSO_TCPV6
            tso(47, 20, 16),
            tso(0, 20, 16),
        ] {
            assert_eq!(validate_super(&bad, &sp), Err(Invalid::Malformed), "{:?}", VnetHdr::decode(&bad));
        }
        let mut long_hdr = VnetHdr::decode(&tso(1400, 20, 16)).unwrap();
        long_hdr.hdr_len = 3100;
        assert_eq!(validate_super(&long_hdr.encode(), &sp), Err(Invalid::Malformed));
        let udp = ipv4([172, 16, 0, 2], [172, 16, 1, 2], PROTO_UDP, &[0u8; 3000]);
        assert_eq!(validate_super(&tso(1400, 20, 6), &udp), Err(Invalid::Malformed));
        // The IPv4 header is checked as for any packet.
        assert_eq!(validate_super(&tso(1400, 20, 16), &sp[..100]), Err(Invalid::Truncated));
    }
}
