//! Every `unsafe` block and raw syscall of cnet lives under this module, behind small safe
//! functions; the rest of the crate stays safe Rust.

pub mod icmp;
pub mod ns;
pub mod packet;
pub mod process;
/// SIGINT/SIGTERM as a stop flag (capture).
pub mod signal;
/// SIGINT/SIGTERM collected synchronously (the tunnel's supervisor).
pub mod term;
pub mod tun;
pub mod udp;

use std::io;
use std::os::fd::RawFd;

/// A syscall's int result: negative means errno.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// A syscall's size result: negative means errno.
pub(crate) fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret as usize) }
}

/// setsockopt(2) of one int option.
pub(crate) fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: val is a live c_int; the length matches.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// An IPv4 socket address as the kernel takes it.
pub(crate) fn sockaddr_v4(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// poll(2) for POLLIN on each of `fds`, up to `timeout_ms`: which are ready. Errors and
/// hang-ups count as ready (the next read reports them); EINTR counts as a timeout (none
/// ready), so callers just loop.
pub fn poll_readable<const N: usize>(fds: [RawFd; N], timeout_ms: i32) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    // SAFETY: pfds is a live array of N pollfds.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted { Ok([false; N]) } else { Err(err) };
    }
    Ok(pfds.map(|p| p.revents != 0))
}

/// The width of the terminal on stdout (TIOCGWINSZ), if stdout is one.
pub fn terminal_width() -> Option<usize> {
    // SAFETY: winsize is plain old data; TIOCGWINSZ fills it on a terminal and fails otherwise.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: fd 1 with a pointer to a live winsize.
    let r = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (r == 0 && ws.ws_col > 0).then_some(ws.ws_col as usize)
}
