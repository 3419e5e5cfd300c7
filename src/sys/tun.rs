//! TUN device: open/attach (TUNSETIFF), persistence, offload flags, packet read/write.
//!
//! One `TunFd` is one open file of `/dev/net/tun` bound to a named interface. The fd is
//! non-blocking: the reader thread polls with a timeout so it can notice shutdown, and
//! TUN writes never wait for anything anyway.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of `struct virtio_net_hdr` (no `num_buffers`), the TUN default for IFF_VNET_HDR.
pub const VNET_HDR_LEN: usize = 10;

/// TSO for IPv4 plus checksum offload: the kernel may hand us 64 KB TCP super-packets
/// with a partial checksum, and accepts the same from us.
pub const OFFLOAD_TSO4_CSUM: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4;

pub struct TunFd {
    fd: OwnedFd,
    vnet_hdr: bool,
}

use super::{cvt, cvt_size};

/// Build an `ifreq` naming `name` with the given TUNSETIFF flags.
fn ifreq(name: &str, flags: libc::c_int) -> io::Result<libc::ifreq> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

impl TunFd {
    /// Attach to the TUN interface `name` (IFF_TUN|IFF_NO_PI), creating it if absent.
    /// With `vnet_hdr`, every packet read/written is prefixed by a virtio_net_hdr.
    pub fn open(name: &str, vnet_hdr: bool) -> io::Result<TunFd> {
        let file =
            OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK).open("/dev/net/tun")?;
        let fd: OwnedFd = file.into();
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        let mut req = ifreq(name, flags)?;
        // SAFETY: fd is a valid /dev/net/tun fd; req is a valid ifreq that outlives the call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut libc::ifreq) })?;
        let tun = TunFd { fd, vnet_hdr };
        if vnet_hdr {
            // The default is already 10, but a previous user of a persistent device may
            // have changed it; the header size is per-device state.
            let sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
            // SAFETY: valid fd, pointer to a live c_int.
            cvt(unsafe { libc::ioctl(tun.raw(), libc::TUNSETVNETHDRSZ, &sz as *const libc::c_int) })?;
        }
        Ok(tun)
    }

    /// Whether the attached device is persistent (TUNGETIFF's IFF_PERSIST): one that `cnet
    /// up` made is; one that TUNSETIFF has just created, because the name did not exist, is not.
    pub fn is_persistent(&self) -> io::Result<bool> {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd; req is a live ifreq that TUNGETIFF fills.
        cvt(unsafe { libc::ioctl(self.raw(), libc::TUNGETIFF, &mut req as *mut libc::ifreq) })?;
        // SAFETY: TUNGETIFF sets the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
        Ok(flags & libc::IFF_PERSIST != 0)
    }

    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRawFd for TunFd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl TunFd {
    /// TUNSETPERSIST: keep the interface after the last fd closes.
    pub fn set_persist(&self, persist: bool) -> io::Result<()> {
        // TUNSETPERSIST takes its argument by value, not by pointer.
        // SAFETY: valid fd; integer argument.
        cvt(unsafe { libc::ioctl(self.raw(), libc::TUNSETPERSIST, persist as libc::c_ulong) })?;
        Ok(())
    }

    /// TUNSETOFFLOAD: which offloads the kernel may use on packets it hands us
    /// (0 = none, plain MTU-sized packets with complete checksums).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: valid fd; TUNSETOFFLOAD takes an unsigned long by value.
        cvt(unsafe { libc::ioctl(self.raw(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) })?;
        Ok(())
    }

    /// Read one packet (with its vnet header when enabled). `WouldBlock` when idle.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid writable memory of buf.len() bytes.
        cvt_size(unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// Write one packet; `buf` must include the vnet header when enabled.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid readable memory of buf.len() bytes.
        cvt_size(unsafe { libc::write(self.raw(), buf.as_ptr().cast(), buf.len()) })
    }

    /// Write one packet given as header + body without copying them together
    /// (used to prefix an unmodified inner packet with a zero vnet header).
    pub fn write2(&self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        let iov = [
            libc::iovec { iov_base: head.as_ptr() as *mut _, iov_len: head.len() },
            libc::iovec { iov_base: body.as_ptr() as *mut _, iov_len: body.len() },
        ];
        // SAFETY: both iovecs point to live slices; the kernel only reads them.
        cvt_size(unsafe { libc::writev(self.raw(), iov.as_ptr(), 2) })
    }
}
