//! `cnet serve`: the demo HTTP server of stages 5 and 6, run by `up` in a container (and on
//! the lab's outside host). Every request gets one line: who answers, on which node, and the
//! client address it sees — so that `curl` shows NAT and DNAT at work:
//! `con1 on 5-outside-world-1 (172.16.0.2:8000) sees you as 10.0.0.20:40112`.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

/// What the server answers `peer`.
pub fn answer(name: &str, host: &str, local: SocketAddrV4, peer: &str) -> String {
    format!("{name} on {host} ({local}) sees you as {peer}\n")
}

/// Listen on `listen` and answer until killed; "ready" on stdout once listening.
pub fn run(name: &str, listen: SocketAddrV4) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let host = crate::run::node::hostname();
    println!("ready");
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let (name, host) = (name.to_string(), host.clone());
        // A thread each: a slow client must not hold the others up.
        std::thread::spawn(move || {
            let _ = reply(conn, &name, &host, listen);
        });
    }
    Ok(())
}

fn reply(mut c: TcpStream, name: &str, host: &str, local: SocketAddrV4) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    // Read the request's head (or whatever comes in 2 s): the answer does not depend on it.
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 16384 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let body = answer(name, host, local, &peer);
    let head =
        format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    c.write_all(head.as_bytes())?;
    c.write_all(body.as_bytes())
}
