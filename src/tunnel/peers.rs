//! Who owns which inner subnet: route lookups for the send side (longest prefix wins),
//! sender and source-address checks for the receive side. A handful of peers at most,
//! so flat vectors scanned linearly beat any tree and never allocate.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Result, bail};

use super::Peer;

#[derive(Clone, Copy, Debug)]
struct Route {
    net: u32,
    mask: u32,
    len: u8,
    peer: usize,
}

pub struct PeerTable {
    addrs: Vec<SocketAddrV4>,
    /// Sorted by prefix length, longest first, so the first match is the best.
    routes: Vec<Route>,
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len as u32) }
}

impl PeerTable {
    pub fn new(peers: &[Peer]) -> Result<PeerTable> {
        if peers.is_empty() {
            bail!("tunnel needs at least one peer");
        }
        let mut routes = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            if peers[..i].iter().any(|q| q.addr == p.addr) {
                bail!("peer {} listed twice", p.addr);
            }
            for &(net, len) in &p.subnets {
                if len > 32 {
                    bail!("peer {}: bad prefix length /{len}", p.addr);
                }
                let m = mask(len);
                let n = u32::from(net) & m;
                if let Some(r) = routes.iter().find(|r: &&Route| r.net == n && r.len == len) {
                    bail!("subnet {}/{len} owned by two peers ({} and {})", Ipv4Addr::from(n), peers[r.peer].addr, p.addr);
                }
                routes.push(Route { net: n, mask: m, len, peer: i });
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.len));
        Ok(PeerTable { addrs: peers.iter().map(|p| p.addr).collect(), routes })
    }

    /// The peer owning `dst` (longest prefix), if any.
    pub fn route(&self, dst: Ipv4Addr) -> Option<usize> {
        let d = u32::from(dst);
        self.routes.iter().find(|r| d & r.mask == r.net).map(|r| r.peer)
    }

    /// Index of the peer sending from exactly `from` (address and port).
    pub fn by_addr(&self, from: SocketAddrV4) -> Option<usize> {
        self.addrs.iter().position(|a| *a == from)
    }

    pub fn addr(&self, peer: usize) -> SocketAddrV4 {
        self.addrs[peer]
    }

    /// May `peer` send inner packets from `src`? (anti-spoofing) Its subnets, and its own
    /// underlay address: a container pinging the peer node's IP goes out plainly, but the
    /// node's reply, from that IP, comes back through the tunnel (TALK.md, step 16).
    pub fn owns(&self, peer: usize, src: Ipv4Addr) -> bool {
        let s = u32::from(src);
        *self.addrs[peer].ip() == src || self.routes.iter().any(|r| r.peer == peer && s & r.mask == r.net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_may_send_from_its_own_address() {
        let t = PeerTable::new(&[Peer {
            addr: "10.0.0.20:9000".parse().unwrap(),
            subnets: vec![(Ipv4Addr::new(172, 16, 1, 0), 24)],
        }])
        .unwrap();
        assert!(t.owns(0, Ipv4Addr::new(10, 0, 0, 20)));
        assert!(t.owns(0, Ipv4Addr::new(172, 16, 1, 2)));
        assert!(!t.owns(0, Ipv4Addr::new(10, 0, 0, 30)));
        assert!(!t.owns(0, Ipv4Addr::new(172, 16, 0, 2)));
        assert_eq!(t.route(Ipv4Addr::new(10, 0, 0, 20)), None, "the peer's address is not routed into the tunnel");
    }

    fn table() -> PeerTable {
        PeerTable::new(&[
            Peer { addr: "10.0.0.20:9000".parse().unwrap(), subnets: vec![(Ipv4Addr::new(172, 16, 0, 0), 16)] },
            Peer { addr: "10.0.0.30:9000".parse().unwrap(), subnets: vec![(Ipv4Addr::new(172, 16, 2, 0), 24)] },
        ])
        .unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table();
        assert_eq!(t.route(Ipv4Addr::new(172, 16, 1, 2)), Some(0));
        assert_eq!(t.route(Ipv4Addr::new(172, 16, 2, 2)), Some(1));
        assert_eq!(t.route(Ipv4Addr::new(10, 1, 1, 1)), None);
    }

    #[test]
    fn sender_and_source_checks() {
        let t = table();
        assert_eq!(t.by_addr("10.0.0.30:9000".parse().unwrap()), Some(1));
        assert_eq!(t.by_addr("10.0.0.30:9001".parse().unwrap()), None);
        assert!(t.owns(1, Ipv4Addr::new(172, 16, 2, 9)));
        assert!(!t.owns(1, Ipv4Addr::new(172, 16, 1, 9)));
    }

    #[test]
    fn rejects_bad_config() {
        assert!(PeerTable::new(&[]).is_err());
        let p = Peer { addr: "10.0.0.20:9000".parse().unwrap(), subnets: vec![(Ipv4Addr::new(172, 16, 0, 0), 33)] };
        assert!(PeerTable::new(&[p]).is_err());
    }
}
