//! Framing of an inner packet inside its UDP datagram: reading it back (the formats
//! themselves are model::wire's, shared with the plan and the capture).
//!
//! The talk's `socat TUN:...,iff-up UDP:...` opens the TUN *without* IFF_NO_PI, so every
//! datagram it sends starts with the 4-byte TUN packet-information header
//! (`flags=0x0000, proto=0x0800`) followed by the IP packet, and it expects the same back.
//! With socat's `iff-no-pi` option (or `WireFormat::Raw`) the datagram is the bare packet.
//! We send the configured framing and accept both on receive: a bare IPv4 packet starts
//! with 0x4_, a PI frame with 0x00, so the two can never be confused.
//!
//! `WireFormat::Gso` (the `udp-gso` backend) is cnet's own, for a same-host underlay that
//! carries 64 KB datagrams (the lab's cables): a TCP super-packet read from the TUN
//! crosses whole, as `GSO_MAGIC`, its virtio_net_hdr and the packet, and the receiving
//! tunnel writes it into its TUN as it came. No segmenting, no checksums, no merging: the
//! least work a TUN + UDP tunnel can do per byte. Its first byte (0xC0) is neither 0x4_
//! nor 0x00, so it cannot be taken for the other two framings either.

use super::packet::Invalid;
use super::vnet;
pub use crate::model::wire::{GSO_MAGIC, WireFormat};

/// What one received datagram carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One inner packet (raw or PI framing).
    Packet(&'a [u8]),
    /// A `Gso` frame: the sender's virtio_net_hdr and its (super-)packet.
    Super { hdr: &'a [u8; vnet::LEN], pkt: &'a [u8] },
}

/// Split a datagram into its framing and content, in any of the three framings.
pub fn parse(d: &[u8]) -> Result<Frame<'_>, Invalid> {
    if let Some(rest) = d.strip_prefix(&GSO_MAGIC) {
        let (hdr, pkt) = rest.split_first_chunk::<{ vnet::LEN }>().ok_or(Invalid::Truncated)?;
        return Ok(Frame::Super { hdr, pkt });
    }
    unframe(d).map(Frame::Packet)
}

/// The inner packet of one received datagram, in raw or PI framing.
fn unframe(d: &[u8]) -> Result<&[u8], Invalid> {
    match d {
        [b, ..] if b >> 4 == 4 => Ok(d),
        [0, 0, 0x08, 0x00, rest @ ..] => Ok(rest),
        // PI frame carrying something else (0x86dd = IPv6).
        [0, 0, _, _, ..] => Err(Invalid::NotIpv4),
        _ => Ok(d), // let IPv4 validation name the problem (truncated / not IPv4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_framings() {
        let ip = [0x45u8, 0, 0, 20];
        assert_eq!(unframe(&ip), Ok(&ip[..]));
        let pi = [0u8, 0, 8, 0, 0x45, 1];
        assert_eq!(unframe(&pi), Ok(&pi[4..]));
        assert_eq!(unframe(&[0, 0, 0x86, 0xdd, 0x60]), Err(Invalid::NotIpv4));
        assert_eq!(unframe(b"garbage"), Ok(&b"garbage"[..]));
        assert_eq!(unframe(&[]), Ok(&[][..]));
    }

    #[test]
    fn tells_gso_frames_from_packets() {
        let mut d = GSO_MAGIC.to_vec();
        d.extend_from_slice(&[1, 1, 52, 0, 0xa8, 5, 20, 0, 16, 0]);
        d.extend_from_slice(&[0x45, 0, 0, 20]);
        let Ok(Frame::Super { hdr, pkt }) = parse(&d) else { panic!("not a super frame") };
        assert_eq!((hdr[1], pkt), (vnet::GSO_TCPV4, &[0x45u8, 0, 0, 20][..]));
        assert_eq!(parse(&d[..10]), Err(Invalid::Truncated));
        assert_eq!(parse(&[0x45, 1]), Ok(Frame::Packet(&[0x45, 1])));
        assert_eq!(parse(&[0, 0, 8, 0, 0x45]), Ok(Frame::Packet(&[0x45])));
    }
}
