//! Framing of an inner packet inside its UDP datagram.
//!
//! The talk's `socat TUN:...,iff-up UDP:...` opens the TUN *without* IFF_NO_PI, so every
//! datagram it sends starts with the 4-byte TUN packet-information header
//! (`flags=0x0000, proto=0x0800`) followed by the IP packet, and it expects the same back.
//! With socat's `iff-no-pi` option (or `WireFormat::Raw`) the datagram is the bare packet.
//! We send the configured framing and accept both on receive: a bare IPv4 packet starts
//! with 0x4_, a PI frame with 0x00, so the two can never be confused.

use super::packet::Invalid;

/// TUN packet-info header for IPv4 (struct tun_pi: u16 flags, be16 proto = ETH_P_IP).
pub const PI_IPV4: [u8; 4] = [0, 0, 0x08, 0x00];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireFormat {
    /// 4-byte TUN PI header + IP packet: what the talk's exact socat command sends, for
    /// talking to it (tun0's MTU must then be underlay − 32).
    TunPi,
    /// Bare IP packet, one per datagram (the default, TALK.md's format; tun0's MTU is
    /// underlay − 28): socat with `iff-no-pi` speaks it; the capture shows the inner packet
    /// as the whole UDP payload.
    #[default]
    Raw,
}

impl WireFormat {
    /// Bytes written in front of every inner packet on send.
    pub fn prefix(self) -> &'static [u8] {
        match self {
            WireFormat::TunPi => &PI_IPV4,
            WireFormat::Raw => &[],
        }
    }

    /// Underlay bytes per inner packet: outer IPv4 (20) + UDP (8) + framing. The TUN MTU
    /// must be `underlay MTU - overhead()` (1468 for PI framing, 1472 for raw, on a 1500
    /// underlay), or full-size packets cannot be sent without fragmenting.
    pub fn overhead(self) -> u32 {
        20 + 8 + self.prefix().len() as u32
    }
}

impl std::str::FromStr for WireFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "pi" | "tun-pi" => Ok(WireFormat::TunPi),
            "raw" => Ok(WireFormat::Raw),
            _ => Err(anyhow::anyhow!("wire format must be 'pi' or 'raw', not {s:?}")),
        }
    }
}

/// The inner packet of one received datagram, in either framing.
pub fn unframe(d: &[u8]) -> Result<&[u8], Invalid> {
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
    fn overhead_sets_the_tun_mtu() {
        assert_eq!(1500 - WireFormat::TunPi.overhead(), 1468);
        assert_eq!(1500 - WireFormat::Raw.overhead(), 1472);
    }
}
