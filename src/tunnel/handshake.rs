//! The tunnel's side of its start handshake with `cnet up` (`cnet tunnel --handshake`):
//! its stdin is a socket to the starter. It waits for "go" before binding or attaching
//! anything (the starter has recorded its pid by then), and answers "ready" once it is.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;

use anyhow::{Context, Result, bail};

pub const GO: &[u8] = b"go";
pub const READY: &[u8] = b"ready";

/// The tunnel's end of the handshake.
pub struct Handshake(fs::File);

impl Handshake {
    /// Block until the starter says go; None if it went away first (it then never recorded
    /// this process, so the tunnel must not start).
    pub fn wait_for_go() -> Result<Option<Handshake>> {
        let stdin = std::io::stdin();
        let mut got = [0u8; GO.len()];
        match stdin.lock().read_exact(&mut got) {
            Ok(()) if got == GO => {}
            Ok(()) => bail!("unexpected handshake {got:?} on stdin"),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        // A second handle on the same socket, to answer on.
        let fd = stdin.as_fd().try_clone_to_owned().context("cannot duplicate stdin")?;
        Ok(Some(Handshake(fs::File::from(fd))))
    }

    /// Tell the starter the tunnel is ready.
    pub fn ready(mut self) -> Result<()> {
        self.0.write_all(READY)?;
        Ok(())
    }
}
