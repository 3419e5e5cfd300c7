//! The eBPF datapath (`--backend ebpf`) as data: the programs' and maps' names, and the
//! exact bytes cnet writes into the maps (the layouts of src/ebpf/tunnel.bpf.c), so that
//! the executor writes them and `explain` prints the `bpftool map update` that writes the
//! same ones.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::topology::Ipv4Net;

/// The object's name in `explain`'s script (cnet carries it inside its binary).
pub const OBJECT: &str = "cnet-tunnel.bpf.o";
/// Where the script version pins the programs and maps for the commands that follow (cnet
/// itself pins nothing: the filters hold the programs, the programs their maps).
pub const PIN_DIR: &str = "/sys/fs/bpf/cnet";

/// The egress program on the overlay device: encapsulates.
pub const PROG_ENCAP: &str = "cnet_encap";
/// The ingress program on the underlay: decapsulates.
pub const PROG_DECAP: &str = "cnet_decap";

pub const MAP_CONFIG: &str = "cnet_config";
pub const MAP_ROUTES: &str = "cnet_routes";
pub const MAP_PEERS: &str = "cnet_peers";
pub const MAP_STATS: &str = "cnet_stats";
pub const MAP_LOCAL: &str = "cnet_local";

/// The TC filter's priority and handle: fixed, so that `down` and the script remove exactly
/// cnet's filter and no one else's on a shared device.
pub const FILTER_PRIO: u16 = 1;
pub const FILTER_HANDLE: u32 = 1;

/// Where a TC program runs on its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// The counters' slots in `cnet_stats` (enum stat in the C source), named as the userspace
/// tunnel's counters are (tunnel::Stats), so that `cnet status` shows both alike.
pub const STATS: [&str; 15] = [
    "tx_packets",
    "tx_bytes",
    "rx_packets",
    "rx_bytes",
    "unknown_peer",
    "truncated",
    "malformed",
    "not_ipv4",
    "spoofed_source",
    "tun_write_error",
    "tun_not_ipv4",
    "no_route",
    "send_error",
    "bad_offload",
    "gso_batch",
];

/// One peer as the maps hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddrV4,
    pub pod_net: Ipv4Net,
}

/// `cnet_config[0]`: local address, port (both in network order), the underlay's and tun0's
/// interface indexes (host order, as the kernel reads a u32), and whether the node's own
/// containers get their packets delivered straight to their bridge port.
pub fn config_value(local: SocketAddrV4, underlay_ifindex: u32, tun_ifindex: u32, direct: bool) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[0..4].copy_from_slice(&local.ip().octets());
    v[4..6].copy_from_slice(&local.port().to_be_bytes());
    v[8..12].copy_from_slice(&underlay_ifindex.to_ne_bytes());
    v[12..16].copy_from_slice(&tun_ifindex.to_ne_bytes());
    v[16..20].copy_from_slice(&u32::from(direct).to_ne_bytes());
    v
}

/// `cnet_routes`: the LPM key (prefix length in host order, then the address) for a pod
/// subnet, and the peer node's address as the value.
pub fn route_entry(p: &Peer) -> ([u8; 8], [u8; 4]) {
    let mut k = [0u8; 8];
    k[0..4].copy_from_slice(&u32::from(p.pod_net.prefix).to_ne_bytes());
    k[4..8].copy_from_slice(&p.pod_net.network().octets());
    (k, p.addr.ip().octets())
}

/// `cnet_peers`: the peer node's address, and what it may send: its pod subnet, the mask,
/// its port.
pub fn peer_entry(p: &Peer) -> ([u8; 4], [u8; 12]) {
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&p.pod_net.network().octets());
    v[4..8].copy_from_slice(&p.pod_net.mask().to_be_bytes());
    v[8..10].copy_from_slice(&p.addr.port().to_be_bytes());
    (p.addr.ip().octets(), v)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        write!(s, "{b:02x}").unwrap();
    }
    s
}

/// The shell that loads the object and fills its maps as cnet does (for `explain`): bpftool
/// needs pins to hand programs and maps from one command to the next.
pub fn load_command(
    local: SocketAddrV4,
    tun: &str,
    underlay: &str,
    peers: &[Peer],
    pods: &[(Ipv4Addr, String)],
    direct: bool,
) -> String {
    let mut s = format!("bpftool prog loadall {OBJECT} {PIN_DIR} type classifier pinmaps {PIN_DIR}");
    let cfg = config_value(local, 0, 0, direct);
    // The interface indexes are the machine's: read at run time, as four little-endian
    // bytes (a node whose containers come and go soon has indexes above 255).
    let ifindex = |dev: &str| {
        format!(
            "$(i=$(ip -o link show dev {dev} | cut -d: -f1); printf '%02x %02x %02x %02x' $((i & 255)) $((i >> 8 & 255)) $((i >> 16 & 255)) $((i >> 24)))"
        )
    };
    write!(
        s,
        " && bpftool map update pinned {PIN_DIR}/{MAP_CONFIG} key hex 00 00 00 00 value hex {} {} {} {}",
        hex(&cfg[..8]),
        ifindex(underlay),
        ifindex(tun),
        hex(&cfg[16..20])
    )
    .unwrap();
    for (addr, port) in pods {
        write!(
            s,
            " && bpftool map update pinned {PIN_DIR}/{MAP_LOCAL} key hex {} value hex {}",
            hex(&addr.octets()),
            ifindex(port)
        )
        .unwrap();
    }
    for p in peers {
        let (k, v) = route_entry(p);
        write!(s, " && bpftool map update pinned {PIN_DIR}/{MAP_ROUTES} key hex {} value hex {}", hex(&k), hex(&v)).unwrap();
        let (k, v) = peer_entry(p);
        write!(s, " && bpftool map update pinned {PIN_DIR}/{MAP_PEERS} key hex {} value hex {}", hex(&k), hex(&v)).unwrap();
    }
    s
}

/// The `tc filter` that attaches a program (for `explain`); the last one drops the pins.
pub fn attach_command(dev: &str, hook: Hook, program: &str, unpin: bool) -> String {
    let mut s = format!(
        "tc filter add dev {dev} {} prio {FILTER_PRIO} handle {FILTER_HANDLE} bpf direct-action object-pinned {PIN_DIR}/{program}",
        hook.name()
    );
    if unpin {
        s.push_str(&format!(" && rm -r {PIN_DIR}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_bytes_are_the_c_layouts() {
        let p = Peer { addr: "10.0.0.20:9000".parse().unwrap(), pod_net: "172.16.1.0/24".parse().unwrap() };
        let (k, v) = route_entry(&p);
        assert_eq!(k, [24, 0, 0, 0, 172, 16, 1, 0]);
        assert_eq!(v, [10, 0, 0, 20]);
        let (k, v) = peer_entry(&p);
        assert_eq!(k, [10, 0, 0, 20]);
        assert_eq!(v, [172, 16, 1, 0, 255, 255, 255, 0, 0x23, 0x28, 0, 0]);
        let c = config_value("10.0.0.10:9000".parse().unwrap(), 2, 7, true);
        assert_eq!(c, [10, 0, 0, 10, 0x23, 0x28, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn script_commands() {
        let p = Peer { addr: "10.0.0.20:9000".parse().unwrap(), pod_net: "172.16.1.0/24".parse().unwrap() };
        let pods = [(Ipv4Addr::new(172, 16, 0, 2), "veth10".to_string())];
        let s = load_command("10.0.0.10:9000".parse().unwrap(), "tun0", "enp0s8", &[p], &pods, true);
        assert!(
            s.contains(
                "cnet_local key hex ac 10 00 02 value hex $(i=$(ip -o link show dev veth10 | cut -d: -f1); printf '%02x %02x %02x %02x' $((i & 255)) $((i >> 8 & 255)) $((i >> 16 & 255)) $((i >> 24)))"
            ),
            "{s}"
        );
        assert!(s.starts_with("bpftool prog loadall cnet-tunnel.bpf.o /sys/fs/bpf/cnet type classifier"), "{s}");
        assert!(s.contains("cnet_routes key hex 18 00 00 00 ac 10 01 00 value hex 0a 00 00 14"), "{s}");
        assert_eq!(
            attach_command("enp0s8", Hook::Ingress, PROG_DECAP, true),
            "tc filter add dev enp0s8 ingress prio 1 handle 1 bpf direct-action object-pinned /sys/fs/bpf/cnet/cnet_decap && rm -r /sys/fs/bpf/cnet"
        );
    }
}
