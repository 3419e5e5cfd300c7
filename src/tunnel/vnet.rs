//! `struct virtio_net_hdr` (linux/virtio_net.h), the 10-byte prefix of every TUN packet
//! once IFF_VNET_HDR is set. It carries the offload metadata: "this is a TCP super-packet,
//! cut it at gso_size" and "the checksum at csum_start+csum_offset is still partial".
//! Fields are in host byte order (legacy virtio on a same-endian TUN).

pub const LEN: usize = crate::sys::tun::VNET_HDR_LEN;

pub const F_NEEDS_CSUM: u8 = 1;
/// The kernel checked the checksum already (set on TUN reads; ignored on TUN writes).
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_ECN: u8 = 0x80;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; LEN] = b.get(..LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = VnetHdr { flags: 1, gso_type: GSO_TCPV4, hdr_len: 52, gso_size: 1420, csum_start: 20, csum_offset: 16 };
        assert_eq!(VnetHdr::decode(&h.encode()), Some(h));
        assert_eq!(VnetHdr::decode(&[0; 9]), None);
    }
}
