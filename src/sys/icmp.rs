//! A raw ICMP socket for echo checks: cnet pings by itself, no `ping` binary.
//!
//! A raw IPPROTO_ICMP socket hands back the whole IPv4 packet, so the reply's TTL can be
//! read — the number the talk looks at to count routers.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub struct IcmpSocket {
    fd: OwnedFd,
}

/// An echo reply as received.
#[derive(Clone, Copy, Debug)]
pub struct EchoReply {
    pub from: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub seq: u16,
}

impl IcmpSocket {
    /// Opened in the calling thread's network namespace, and bound to it for good.
    pub fn open() -> io::Result<IcmpSocket> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(IcmpSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn send_echo(&self, to: Ipv4Addr, id: u16, seq: u16) -> io::Result<()> {
        let pkt = echo_request(id, seq);
        let addr = super::sockaddr_v4(std::net::SocketAddrV4::new(to, 0));
        // SAFETY: buffer and address are valid for the lengths given.
        super::cvt_size(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        })
        .map(drop)
    }

    /// Wait up to `timeout` for the next echo reply (other ICMP is skipped).
    pub fn recv_reply(&self, timeout: Duration) -> io::Result<Option<EchoReply>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Not ready (timeout or EINTR): the deadline check above decides.
            if super::poll_readable([self.fd.as_raw_fd()], left.as_millis().max(1) as i32)? == [false] {
                continue;
            }
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if let Some(r) = parse_echo_reply(&buf[..n as usize]) {
                return Ok(Some(r));
            }
        }
    }
}

pub fn echo_request(id: u16, seq: u16) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..24].copy_from_slice(b"cnet echo check!");
    let c = crate::checksum::checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// An IPv4 packet carrying an ICMP echo reply, or None.
pub fn parse_echo_reply(pkt: &[u8]) -> Option<EchoReply> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    let icmp = pkt.get(ihl..ihl + 8)?;
    if pkt[9] != 1 || icmp[0] != 0 {
        return None;
    }
    Some(EchoReply {
        from: Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]),
        ttl: pkt[8],
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let p = echo_request(0x1234, 7);
        assert_eq!(crate::checksum::checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!((p[0], &p[4..8]), (8, &[0x12, 0x34, 0, 7][..]));
    }

    #[test]
    fn parses_reply_ttl() {
        let mut pkt = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 62, 1, 0, 0, 172, 16, 1, 2, 172, 16, 0, 2];
        pkt.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 9]);
        let r = parse_echo_reply(&pkt).unwrap();
        assert_eq!((r.from, r.ttl, r.id, r.seq), (Ipv4Addr::new(172, 16, 1, 2), 62, 0x1234, 9));
        pkt[20] = 8; // a request, not a reply
        assert!(parse_echo_reply(&pkt).is_none());
        assert!(parse_echo_reply(&pkt[..22]).is_none());
    }
}
