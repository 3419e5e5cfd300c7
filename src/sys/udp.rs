//! The underlay UDP socket: options (buffers, PMTU, GSO/GRO) and batched I/O with
//! sendmmsg/recvmmsg. The socket stays unconnected so one socket serves every peer
//! and an ICMP port-unreachable is never turned into ECONNREFUSED on later calls.
//!
//! The socket itself is blocking (senders wait for buffer space instead of dropping);
//! receives pass MSG_DONTWAIT so the forwarding thread can poll with a timeout.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

use super::{cvt, setsockopt_int, sockaddr_v4};

// linux/udp.h: the cmsg types of the batched send and receive below (the options themselves
// go through nix).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Space for one cmsg carrying a u16/int (UDP_SEGMENT or UDP_GRO), 8-byte aligned.
const CMSG_SPACE: usize = 32;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_SPACE]);

pub struct UdpSock {
    sock: UdpSocket,
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)), u16::from_be(s.sin_port))
}

/// The MTU of the route from `local` to `peer` (IP_MTU on a connected probe socket; no
/// packet is sent).
pub fn path_mtu(local: Ipv4Addr, peer: SocketAddrV4) -> io::Result<u32> {
    let probe = UdpSocket::bind(SocketAddrV4::new(local, 0))?;
    probe.connect(peer)?;
    Ok(getsockopt(&probe, sockopt::IpMtu)? as u32)
}

impl UdpSock {
    pub fn bind(addr: SocketAddrV4) -> io::Result<UdpSock> {
        Ok(UdpSock { sock: UdpSocket::bind(addr)? })
    }

    fn raw(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Large socket buffers absorb bursts of 64 KB super-packets. The *FORCE variants
    /// ignore net.core.[rw]mem_max (we run with CAP_NET_ADMIN); plain ones are the fallback.
    pub fn set_buffers(&self, bytes: usize) {
        if setsockopt(&self.sock, sockopt::SndBufForce, &bytes).is_err() {
            let _ = setsockopt(&self.sock, sockopt::SndBuf, &bytes);
        }
        if setsockopt(&self.sock, sockopt::RcvBufForce, &bytes).is_err() {
            let _ = setsockopt(&self.sock, sockopt::RcvBuf, &bytes);
        }
    }

    /// IP_PMTUDISC_DO: set DF and never fragment locally; oversize sends fail with EMSGSIZE.
    pub fn set_pmtudisc_do(&self) -> io::Result<()> {
        setsockopt_int(self.raw(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    }

    /// Probe UDP GSO support: kernels without it reject the option.
    pub fn probe_gso(&self) -> io::Result<()> {
        Ok(setsockopt(&self.sock, sockopt::UdpGsoSegment, &0)?)
    }

    /// Ask the kernel to coalesce same-flow datagrams into one receive (UDP GRO).
    pub fn enable_gro(&self) -> io::Result<()> {
        Ok(setsockopt(&self.sock, sockopt::UdpGroSegment, &true)?)
    }
}

impl AsRawFd for UdpSock {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

/// One datagram (or one GSO train of equal-size datagrams) to send: `buf[start..start+len]`.
#[derive(Clone, Copy, Debug)]
pub struct SendItem {
    pub dst: SocketAddrV4,
    pub start: usize,
    pub len: usize,
    /// UDP_SEGMENT size; 0 sends `len` bytes as a single datagram.
    pub gso_size: u16,
}

/// Preallocated sendmmsg state for up to `cap` messages.
pub struct SendBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    cmsgs: Vec<CmsgBuf>,
}

impl SendBatch {
    pub fn new(cap: usize) -> SendBatch {
        // SAFETY: these are plain C structs; zero is a valid (empty) value.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        SendBatch {
            hdrs: vec![zero_hdr; cap],
            iovs: vec![zero_iov; cap],
            addrs: vec![sockaddr_v4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); cap],
            cmsgs: vec![CmsgBuf([0; CMSG_SPACE]); cap],
        }
    }

    /// sendmmsg the first (batch capacity) of `items`. Returns how many were sent; an Err
    /// refers to `items[0]` (the kernel reports the first failing message's errno
    /// only when nothing before it was sent).
    pub fn send(&mut self, sock: &UdpSock, buf: &[u8], items: &[SendItem]) -> io::Result<usize> {
        let n = items.len().min(self.hdrs.len());
        for (i, it) in items[..n].iter().enumerate() {
            assert!(it.start + it.len <= buf.len(), "send item out of bounds");
            self.addrs[i] = sockaddr_v4(it.dst);
            self.iovs[i] = libc::iovec { iov_base: buf[it.start..].as_ptr() as *mut libc::c_void, iov_len: it.len };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            if it.gso_size > 0 && it.len > it.gso_size as usize {
                let cbuf = &mut self.cmsgs[i];
                h.msg_control = cbuf.0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE(2) <= CMSG_SPACE bytes; msg_control points at an
                // aligned buffer of that size, so CMSG_FIRSTHDR is non-null and in bounds.
                unsafe {
                    h.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, it.gso_size);
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        // SAFETY: hdrs[..n] point into buf, addrs, iovs and cmsgs, all alive for the call.
        cvt(unsafe { libc::sendmmsg(sock.raw(), self.hdrs.as_mut_ptr(), n as libc::c_uint, 0) }).map(|k| k as usize)
    }
}

/// One received message as seen by the forwarding code.
pub struct Received<'a> {
    pub src: SocketAddrV4,
    pub data: &'a [u8],
    /// UDP_GRO segment size when the kernel coalesced several datagrams.
    pub gro_size: Option<u16>,
    /// The message did not fit the buffer (MSG_TRUNC): its tail is lost.
    pub truncated: bool,
}

/// Preallocated recvmmsg state: `cap` buffers of `size` bytes each.
pub struct RecvBatch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    cmsgs: Vec<CmsgBuf>,
    bufs: Vec<u8>,
    size: usize,
    filled: usize,
}

impl RecvBatch {
    pub fn new(cap: usize, size: usize) -> RecvBatch {
        // SAFETY: plain C structs; zero is a valid value.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        RecvBatch {
            hdrs: vec![zero_hdr; cap],
            iovs: vec![zero_iov; cap],
            addrs: vec![sockaddr_v4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); cap],
            cmsgs: vec![CmsgBuf([0; CMSG_SPACE]); cap],
            bufs: vec![0u8; cap * size],
            size,
            filled: 0,
        }
    }

    /// recvmmsg without blocking. Returns the number of messages (WouldBlock when none).
    pub fn recv(&mut self, sock: &UdpSock) -> io::Result<usize> {
        let cap = self.hdrs.len();
        let base = self.bufs.as_mut_ptr();
        for i in 0..cap {
            // SAFETY: i * size + size <= bufs.len().
            self.iovs[i] = libc::iovec { iov_base: unsafe { base.add(i * self.size) }.cast(), iov_len: self.size };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        self.filled = 0;
        // SAFETY: every header points into memory owned by self that outlives the call.
        let ret = cvt(unsafe {
            libc::recvmmsg(sock.raw(), self.hdrs.as_mut_ptr(), cap as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        })?;
        self.filled = ret as usize;
        Ok(self.filled)
    }

    /// The i-th message of the last `recv`.
    pub fn get(&self, i: usize) -> Received<'_> {
        assert!(i < self.filled);
        let mh = &self.hdrs[i];
        let len = (mh.msg_len as usize).min(self.size);
        let h = &mh.msg_hdr;
        let mut gro_size = None;
        if h.msg_controllen > 0 {
            // SAFETY: the kernel filled msg_control/msg_controllen with well-formed cmsgs
            // inside our buffer; CMSG_* walk only within msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                        if v > 0 && v <= u16::MAX as libc::c_int {
                            gro_size = Some(v as u16);
                        }
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        Received {
            src: from_sockaddr(&self.addrs[i]),
            data: &self.bufs[i * self.size..i * self.size + len],
            gro_size,
            truncated: h.msg_flags & libc::MSG_TRUNC != 0,
        }
    }
}
