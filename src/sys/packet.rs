//! AF_PACKET capture socket, safe wrappers.
//!
//! The socket is created with protocol 0, so it sees nothing until it is bound to
//! `ETH_P_ALL` on one interface: no packets of other interfaces slip in before the bind.
//! Everything is per calling thread's network namespace (sockets and `if_nametoindex` use
//! the namespace of the thread that creates them).

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `sll_pkttype` of an outgoing packet (linux/if_packet.h).
pub const PACKET_OUTGOING: u8 = 4;

/// What `recv` learned about one packet.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Bytes copied into the buffer.
    pub captured: usize,
    /// Length of the packet on the wire (may exceed `captured`).
    pub original: usize,
    /// `sll_pkttype`: 0 host, 1 broadcast, 2 multicast, 3 other host, 4 outgoing.
    pub pkttype: u8,
}

/// Index of interface `name` in the calling thread's network namespace.
pub fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(io::Error::last_os_error()) } else { Ok(idx) }
}

/// A raw packet socket bound to one interface, both directions.
pub struct PacketSocket {
    fd: OwnedFd,
    hatype: u16,
}

use super::cvt;

impl PacketSocket {
    /// Opens an `AF_PACKET`/`SOCK_RAW` socket bound to `ifindex` for `ETH_P_ALL`.
    /// Needs CAP_NET_RAW in the namespace.
    pub fn open(ifindex: u32) -> io::Result<PacketSocket> {
        let ifindex = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index out of range"))?;
        // SAFETY: plain syscall; on success we own the returned descriptor.
        let fd = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };

        // A bigger receive buffer rides out bursts (best effort; capped by rmem_max).
        let rcvbuf: libc::c_int = 4 << 20;
        let _ = super::setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf);

        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: valid fd; `sll` is a properly sized sockaddr_ll.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;

        // The bound address tells the interface's hardware type (ARPHRD_*).
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut name: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: as above; the kernel writes at most `len` bytes into `name`.
        cvt(unsafe { libc::getsockname(fd.as_raw_fd(), (&mut name as *mut libc::sockaddr_ll).cast(), &mut len) })?;
        Ok(PacketSocket { fd, hatype: name.sll_hatype })
    }

    /// The interface's hardware type (`ARPHRD_ETHER` = 1, `ARPHRD_NONE` = 0xfffe for TUN).
    pub fn hardware_type(&self) -> u16 {
        self.hatype
    }

    /// Waits up to `timeout` for one packet and copies it into `buf`.
    /// `Ok(None)`: nothing arrived in time, or a signal interrupted the wait.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Received>> {
        // Read first and wait only when nothing is queued: one syscall per packet under load.
        if let Some(r) = self.try_recv(buf)? {
            return Ok(Some(r));
        }
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        if super::poll_readable([self.fd.as_raw_fd()], ms)? == [false] {
            return Ok(None);
        }
        self.try_recv(buf)
    }

    /// One packet if one is queued (MSG_DONTWAIT); `Ok(None)` if not, or on EINTR.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        // SAFETY: sockaddr_ll is plain old data.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // MSG_TRUNC: the return value is the full packet length even when `buf` is smaller.
        // SAFETY: `buf` is valid for `buf.len()` bytes; `from`/`len` describe a sockaddr_ll.
        let r = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        let original = r as usize;
        Ok(Some(Received { captured: original.min(buf.len()), original, pkttype: from.sll_pkttype }))
    }

    /// Packets the kernel dropped because the socket buffer was full, since the last call
    /// (PACKET_STATISTICS resets on read).
    pub fn drops(&self) -> io::Result<u32> {
        // SAFETY: tpacket_stats is plain old data.
        let mut st: libc::tpacket_stats = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: valid fd; the kernel writes at most `len` bytes into `st`.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        })?;
        Ok(st.tp_drops)
    }
}
