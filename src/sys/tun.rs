//! TUN devices: the TUNSETIFF ioctl (a TUN device cannot be created over netlink).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use anyhow::{anyhow, Context, Result};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `ip tuntap add dev NAME mode tun`: a persistent TUN device (no packet-info header) that a
/// tunnel process attaches to later.
pub fn create_persistent(name: &str) -> Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(anyhow!("interface name {name} is too long"));
    }
    let f = OpenOptions::new().read(true).write(true).open("/dev/net/tun")
        .context("cannot open /dev/net/tun (is the tun module loaded?)")?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes an ifreq we own; TUNSETPERSIST takes an int.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot create TUN device {name}"));
        }
        if libc::ioctl(f.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot make {name} persistent"));
        }
    }
    Ok(())
}
