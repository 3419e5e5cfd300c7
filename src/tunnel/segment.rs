//! Send side of the offload path: turn what the TUN hands us (with IFF_VNET_HDR and
//! TSO4) back into ordinary MTU-sized IPv4 packets, because the wire format is one plain
//! inner packet per UDP datagram (what socat would send).
//!
//! A TSO super-packet is one IPv4/TCP header followed by up to 64 KB of payload; the
//! segments are written back to back into `out` so that a single sendmsg with UDP_SEGMENT
//! (all datagrams the same size except the last) puts them on the wire.

use super::packet::{self, PROTO_TCP, PROTO_UDP};
use crate::checksum;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegError {
    /// Not IPv4/TCP, or headers inconsistent with the buffer.
    BadPacket,
    /// gso_size of zero or larger than the payload allows.
    BadMss,
    /// `out` cannot hold the segments.
    NoRoom,
}

/// Result of `segment_tcp4`: `count` datagrams in `out[..total]`, each `seg_len` long
/// (wire prefix included) except the last, which may be shorter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub seg_len: usize,
    pub count: usize,
    pub total: usize,
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Finish a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) in place: the field already
/// holds the pseudo-header sum, so summing from `start` to the end completes it.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), SegError> {
    let field = start.checked_add(offset).ok_or(SegError::BadPacket)?;
    if field + 2 > pkt.len() {
        return Err(SegError::BadPacket);
    }
    let mut c = checksum::checksum(&pkt[start..]);
    // A computed UDP checksum of 0 is sent as 0xffff (0 means "no checksum").
    if c == 0 && pkt.len() > 9 && pkt[9] == PROTO_UDP && offset == 6 {
        c = 0xffff;
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Cut the IPv4/TCP super-packet `pkt` into segments carrying at most `mss` payload bytes,
/// each with its own IP total length, IP id, header checksum, TCP sequence number, flags
/// and full TCP checksum. Each segment is preceded by `prefix` (the wire framing, e.g.
/// the 4-byte TUN packet-info header socat sends), so every datagram is the same size.
pub fn segment_tcp4(pkt: &[u8], mss: usize, prefix: &[u8], out: &mut [u8]) -> Result<Segments, SegError> {
    if pkt.len() < 40 || pkt[0] >> 4 != 4 || pkt[9] != PROTO_TCP {
        return Err(SegError::BadPacket);
    }
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    if ihl < 20 || pkt.len() < ihl + 20 {
        return Err(SegError::BadPacket);
    }
    let thl = ((pkt[ihl + 12] >> 4) as usize) * 4;
    let hlen = ihl + thl;
    if thl < 20 || pkt.len() < hlen {
        return Err(SegError::BadPacket);
    }
    // Trust the buffer length over the IP total length (which is ≤ 65535 anyway).
    let payload = &pkt[hlen..];
    if mss == 0 || hlen + mss > u16::MAX as usize {
        return Err(SegError::BadMss);
    }
    let count = payload.len().div_ceil(mss).max(1);
    let plen = prefix.len();
    let total = payload.len() + count * (plen + hlen);
    if total > out.len() {
        return Err(SegError::NoRoom);
    }
    let src: [u8; 4] = pkt[12..16].try_into().unwrap();
    let dst: [u8; 4] = pkt[16..20].try_into().unwrap();
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq0 = u32::from_be_bytes(pkt[ihl + 4..ihl + 8].try_into().unwrap());
    let flags0 = pkt[ihl + 13];

    let mut pos = 0;
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let seg_len = hlen + chunk.len();
        out[pos..pos + plen].copy_from_slice(prefix);
        pos += plen;
        let seg = &mut out[pos..pos + seg_len];
        seg[..hlen].copy_from_slice(&pkt[..hlen]);
        seg[hlen..].copy_from_slice(chunk);

        // IP: length, id (incremented per segment like the kernel does), checksum.
        seg[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        packet::fix_ip_checksum(&mut seg[..ihl]);

        // TCP: sequence advances by the payload before it; FIN/PSH only on the last
        // segment, CWR only on the first (same rules as the kernel's tcp_gso_segment).
        let tcp = &mut seg[ihl..];
        let seq = seq0.wrapping_add((i * mss) as u32);
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 != count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            flags &= !TCP_CWR;
        }
        tcp[13] = flags;
        tcp[16] = 0;
        tcp[17] = 0;
        let tcp_len = (thl + chunk.len()) as u16;
        let c = !checksum::fold(checksum::sum(tcp, checksum::pseudo_header(src, dst, PROTO_TCP, tcp_len)));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        pos += seg_len;
    }
    Ok(Segments { seg_len: plen + hlen + mss.min(payload.len().max(1)), count, total })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tunnel::packet::validate_ipv4;

    /// IPv4/TCP packet with timestamps-like options, valid checksums.
    pub fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut tcp = vec![0u8; 32];
        tcp[0..2].copy_from_slice(&5201u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&777u32.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        tcp.extend_from_slice(payload);
        let mut p = crate::tunnel::packet::tests::ipv4([172, 16, 0, 2], [172, 16, 1, 2], PROTO_TCP, &tcp);
        fix_tcp_checksum(&mut p);
        p
    }

    pub fn fix_tcp_checksum(p: &mut [u8]) {
        p[36] = 0;
        p[37] = 0;
        let src: [u8; 4] = p[12..16].try_into().unwrap();
        let dst: [u8; 4] = p[16..20].try_into().unwrap();
        let c = !checksum::fold(checksum::sum(&p[20..], checksum::pseudo_header(src, dst, PROTO_TCP, (p.len() - 20) as u16)));
        p[36..38].copy_from_slice(&c.to_be_bytes());
    }

    pub fn tcp_checksum_ok(p: &[u8]) -> bool {
        let src: [u8; 4] = p[12..16].try_into().unwrap();
        let dst: [u8; 4] = p[16..20].try_into().unwrap();
        checksum::fold(checksum::sum(&p[20..], checksum::pseudo_header(src, dst, PROTO_TCP, (p.len() - 20) as u16))) == 0xffff
    }

    #[test]
    fn splits_super_packet() {
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let sp = tcp4(1000, 0x18 | TCP_CWR, &payload); // ACK|PSH|CWR
        let mut out = vec![0u8; 10000];
        let s = segment_tcp4(&sp, 1400, &[], &mut out).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.seg_len, 52 + 1400);
        assert_eq!(s.total, 5000 + 4 * 52);
        let mut got = Vec::new();
        for i in 0..4 {
            let end = (i * s.seg_len + s.seg_len).min(s.total);
            let seg = &out[i * s.seg_len..end];
            validate_ipv4(seg).unwrap();
            assert!(tcp_checksum_ok(seg), "segment {i} tcp checksum");
            assert_eq!(u32::from_be_bytes(seg[24..28].try_into().unwrap()), 1000 + 1400 * i as u32);
            assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 0x1234 + i as u16);
            let f = seg[33];
            assert_eq!(f & TCP_PSH != 0, i == 3);
            assert_eq!(f & TCP_CWR != 0, i == 0);
            got.extend_from_slice(&seg[52..]);
        }
        assert_eq!(got, payload);
    }

    #[test]
    fn prefixes_every_segment() {
        let sp = tcp4(7, 0x10, &[9u8; 250]);
        let mut out = vec![0u8; 1000];
        let s = segment_tcp4(&sp, 100, &[0, 0, 8, 0], &mut out).unwrap();
        assert_eq!((s.count, s.seg_len, s.total), (3, 4 + 52 + 100, 250 + 3 * 56));
        for i in 0..3 {
            let d = &out[i * s.seg_len..((i + 1) * s.seg_len).min(s.total)];
            assert_eq!(&d[..4], &[0, 0, 8, 0]);
            validate_ipv4(&d[4..]).unwrap();
            assert!(tcp_checksum_ok(&d[4..]));
        }
    }

    #[test]
    fn rejects_bad_input() {
        let mut out = vec![0u8; 100];
        assert_eq!(segment_tcp4(&[0u8; 10], 100, &[], &mut out), Err(SegError::BadPacket));
        let sp = tcp4(1, 0x10, &[0u8; 500]);
        assert_eq!(segment_tcp4(&sp, 0, &[], &mut out), Err(SegError::BadMss));
        assert_eq!(segment_tcp4(&sp, 100, &[], &mut out), Err(SegError::NoRoom));
    }

    #[test]
    fn completes_partial_checksum() {
        let mut p = tcp4(5, 0x10, b"hello world");
        let src: [u8; 4] = p[12..16].try_into().unwrap();
        let dst: [u8; 4] = p[16..20].try_into().unwrap();
        let partial = checksum::fold(checksum::pseudo_header(src, dst, PROTO_TCP, (p.len() - 20) as u16));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        complete_checksum(&mut p, 20, 16).unwrap();
        assert!(tcp_checksum_ok(&p));
    }
}
