//! IPv4 header parsing and validation of packets arriving from the underlay: the tunnel
//! writes only well-formed IPv4 into the TUN, so the kernel never sees garbage from the wire.

use std::net::Ipv4Addr;

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
}
