//! How the overlay carries an inner packet in a UDP datagram: the framings cnet's tunnel
//! speaks, as data. The plan names one per backend, the tunnel encodes and decodes them
//! (tunnel/wire.rs), the capture recognises them.
//!
//! The talk's `socat TUN:...,iff-up UDP:...` opens the TUN *without* IFF_NO_PI, so every
//! datagram it sends starts with the 4-byte TUN packet-information header
//! (`flags=0x0000, proto=0x0800`) followed by the IP packet. With socat's `iff-no-pi` (or
//! `Raw`) the datagram is the bare packet. `Gso` is cnet's own, for a same-host underlay
//! that carries 64 KB datagrams: a TCP super-packet crosses whole, behind `GSO_MAGIC` and
//! the kernel's virtio_net_hdr. The three first bytes (0x4_, 0x00, 0xC0) never collide.

/// The kernel's `struct virtio_net_hdr`, in front of each packet of a TUN with offloads.
pub use crate::sys::tun::VNET_HDR_LEN;

/// First bytes of a `Gso` frame: a marker byte, "GS", and the framing version.
pub const GSO_MAGIC: [u8; 4] = [0xC0, b'G', b'S', 1];
/// Bytes in front of the inner packet in a `Gso` frame.
pub const GSO_FRAME_HDR: usize = GSO_MAGIC.len() + VNET_HDR_LEN;

/// TUN packet-info header for IPv4 (struct tun_pi: u16 flags, be16 proto = ETH_P_IP).
pub const PI_IPV4: [u8; 4] = [0, 0, 0x08, 0x00];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireFormat {
    /// 4-byte TUN PI header + IP packet: what the talk's exact socat command sends, for
    /// talking to it (tun0's MTU must then be underlay − 32).
    TunPi,
    /// Bare IP packet, one per datagram (the default, TALK.md's format; tun0's MTU is
    /// underlay − 28): socat with `iff-no-pi` speaks it; the capture shows the inner packet
    /// as the whole UDP payload.
    #[default]
    Raw,
    /// cnet to cnet only, over an underlay that carries 64 KB datagrams: whole TCP
    /// super-packets with their virtio_net_hdr (see the module comment). Whatever cannot
    /// go whole (too big for one datagram) goes as `Raw` packets, which both ends accept.
    Gso,
}

impl WireFormat {
    /// The name `--wire` takes.
    pub fn name(self) -> &'static str {
        match self {
            WireFormat::TunPi => "pi",
            WireFormat::Raw => "raw",
            WireFormat::Gso => "gso",
        }
    }

    /// Bytes written in front of every inner packet on send.
    pub fn prefix(self) -> &'static [u8] {
        match self {
            WireFormat::TunPi => &PI_IPV4,
            WireFormat::Raw | WireFormat::Gso => &[],
        }
    }

    /// Underlay bytes per inner packet: outer IPv4 (20) + UDP (8) + framing. The TUN MTU
    /// must be `underlay MTU - overhead()` (1468 for PI framing, 1472 for raw, on a 1500
    /// underlay), or full-size packets cannot be sent without fragmenting.
    pub fn overhead(self) -> u32 {
        let framing = if self == WireFormat::Gso { GSO_FRAME_HDR } else { self.prefix().len() };
        20 + 8 + framing as u32
    }
}

impl std::str::FromStr for WireFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "pi" | "tun-pi" => Ok(WireFormat::TunPi),
            "raw" => Ok(WireFormat::Raw),
            "gso" => Ok(WireFormat::Gso),
            _ => Err(anyhow::anyhow!("wire format must be 'pi', 'raw' or 'gso', not {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_sets_the_tun_mtu() {
        assert_eq!(1500 - WireFormat::TunPi.overhead(), 1468);
        assert_eq!(1500 - WireFormat::Raw.overhead(), 1472);
        // The lab's 64 KB cables: the largest datagram is 65535 - 28 bytes.
        assert_eq!(65535 - WireFormat::Gso.overhead(), 65535 - 28 - 14);
    }
}
