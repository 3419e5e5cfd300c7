//! Hand-built frames for every case the capture prints, plus truncation and random bytes.

use super::*;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const BCAST: [u8; 6] = [0xff; 6];

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(payload);
    h
}

fn icmp_echo(ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut h = vec![ty, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&[0xab; 56]);
    let c = checksum(&h);
    h[2..4].copy_from_slice(&c.to_be_bytes());
    h
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa);
    p
}

const CON1: [u8; 4] = [172, 16, 0, 2];
const CON_REMOTE: [u8; 4] = [172, 16, 1, 2];
const NODE1: [u8; 4] = [10, 0, 0, 10];
const NODE2: [u8; 4] = [10, 0, 0, 20];

fn inner_ping() -> Vec<u8> {
    ipv4(CON1, CON_REMOTE, 1, 63, &icmp_echo(8, 77, 1))
}

fn line(frame: &[u8], link: LinkKind) -> String {
    describe(frame, link, &[9000]).to_string()
}

#[test]
fn ethernet_ip_icmp_on_bridge() {
    let f = eth(MAC_B, MAC_A, 0x0800, &inner_ping());
    let s = describe(&f, LinkKind::Ethernet, &[9000]);
    assert_eq!(s.protocols, ["eth", "ip", "icmp"]);
    assert_eq!(s.src.as_deref(), Some("172.16.0.2"));
    assert_eq!(s.dst.as_deref(), Some("172.16.1.2"));
    assert_eq!(s.problem, None);
    assert_eq!(s.to_string(), "172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request id=77 seq=1 ttl=63)");
}

#[test]
fn tun_delivers_bare_ip() {
    assert_eq!(line(&inner_ping(), LinkKind::RawIp), "172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=63)");
    let reply = ipv4(CON_REMOTE, CON1, 1, 62, &icmp_echo(0, 77, 1));
    assert_eq!(line(&reply, LinkKind::RawIp), "172.16.1.2 → 172.16.0.2  ip:icmp (echo reply id=77 seq=1 ttl=62)");
}

#[test]
fn tun_raw_ipv6() {
    let a: Ipv6Addr = "fd00::1".parse().unwrap();
    let b: Ipv6Addr = "fd00::2".parse().unwrap();
    let mut echo = icmp_echo(128, 5, 9);
    echo.truncate(16);
    let p = ipv6(a, b, 58, &echo);
    assert_eq!(line(&p, LinkKind::RawIp), "fd00::1 → fd00::2  ipv6:icmpv6 (echo request id=5 seq=9 hlim=64)");
}

#[test]
fn udp_tunnel_carries_inner_ip() {
    let outer = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &inner_ping()));
    let f = eth(MAC_B, MAC_A, 0x0800, &outer);
    let s = describe(&f, LinkKind::Ethernet, &[9000]);
    assert_eq!(s.stack(), "eth:ip:udp");
    assert_eq!(s.innermost().stack(), "ip:icmp");
    assert_eq!(
        s.to_string(),
        "10.0.0.10 → 10.0.0.20  eth:ip:udp (9000 → 9000, 84 bytes)  |  \
         inner 172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=63)"
    );
    // Without the port in tunnel_ports it is plain UDP data, like tshark.
    let plain = describe(&f, LinkKind::Ethernet, &[]);
    assert_eq!(plain.to_string(), "10.0.0.10 → 10.0.0.20  eth:ip:udp:data (9000 → 9000, 84 bytes)");
    assert!(plain.inner.is_none());
}

#[test]
fn udp_tunnel_gso_frame() {
    // cnet's gso wire: magic, a 10-byte virtio_net_hdr, then the packet
    let mut payload = crate::model::wire::GSO_MAGIC.to_vec();
    payload.extend_from_slice(&[0; 10]);
    payload.extend_from_slice(&inner_ping());
    let outer = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &payload));
    assert_eq!(
        line(&outer, LinkKind::RawIp),
        "10.0.0.10 → 10.0.0.20  ip:udp (9000 → 9000, 98 bytes, gso frame)  |  \
         inner 172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=63)"
    );
}

#[test]
fn udp_tunnel_with_tun_packet_information_header() {
    // socat's TUN address keeps the 4-byte struct tun_pi (flags 0, ethertype) in front
    let mut payload = vec![0, 0, 0x08, 0x00];
    payload.extend_from_slice(&inner_ping());
    let outer = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &payload));
    assert_eq!(
        line(&outer, LinkKind::RawIp),
        "10.0.0.10 → 10.0.0.20  ip:udp (9000 → 9000, 88 bytes, tun pi)  |  \
         inner 172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=63)"
    );
    // ethertype and IP version must agree
    payload[2..4].copy_from_slice(&[0x86, 0xdd]);
    let outer = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &payload));
    assert_eq!(describe(&outer, LinkKind::RawIp, &[9000]).stack(), "ip:udp:data");
}

#[test]
fn tunnel_port_matches_either_side() {
    let outer = ipv4(NODE1, NODE2, 17, 64, &udp(40000, 9000, &inner_ping()));
    assert!(describe(&outer, LinkKind::RawIp, &[9000]).inner.is_some());
    let outer = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 40000, &inner_ping()));
    assert!(describe(&outer, LinkKind::RawIp, &[9000]).inner.is_some());
    // Payload that is not IP on a tunnel port stays data.
    let outer = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, b"hello"));
    assert_eq!(describe(&outer, LinkKind::RawIp, &[9000]).stack(), "ip:udp:data");
}

#[test]
fn vxlan_carries_inner_ethernet() {
    let inner = eth(MAC_B, MAC_A, 0x0800, &inner_ping());
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    vx.extend_from_slice(&inner);
    let f = eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(51234, 4789, &vx)));
    let s = describe(&f, LinkKind::Ethernet, &[9000]);
    assert_eq!(s.stack(), "eth:ip:udp:vxlan");
    assert_eq!(
        s.to_string(),
        "10.0.0.10 → 10.0.0.20  eth:ip:udp:vxlan (51234 → 4789, vni 42)  |  \
         inner 172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request id=77 seq=1 ttl=63)"
    );
    // flannel's 8472 too
    let f = ipv4(NODE1, NODE2, 17, 64, &udp(51234, 8472, &vx));
    assert_eq!(describe(&f, LinkKind::RawIp, &[]).stack(), "ip:udp:vxlan");
}

#[test]
fn ip_in_ip() {
    let p = ipv4(NODE1, NODE2, 4, 64, &inner_ping());
    assert_eq!(
        line(&p, LinkKind::RawIp),
        "10.0.0.10 → 10.0.0.20  ip  |  inner 172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=63)"
    );
}

#[test]
fn nesting_is_bounded() {
    let mut p = inner_ping();
    for _ in 0..20 {
        p = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &p));
    }
    let s = describe(&p, LinkKind::RawIp, &[9000]);
    let mut depth = 1;
    let mut cur = &s;
    while let Some(i) = &cur.inner {
        depth += 1;
        cur = i;
    }
    assert_eq!(depth, MAX_DEPTH);
    assert_eq!(cur.stack(), "ip:udp:data");
}

#[test]
fn arp_request_and_reply() {
    let req = eth(BCAST, MAC_A, 0x0806, &arp(1, MAC_A, NODE1, [0; 6], NODE2));
    assert_eq!(line(&req, LinkKind::Ethernet), "10.0.0.10 → 10.0.0.20  eth:arp (who-has 10.0.0.20 tell 10.0.0.10)");
    let rep = eth(MAC_A, MAC_B, 0x0806, &arp(2, MAC_B, NODE2, MAC_A, NODE1));
    assert_eq!(line(&rep, LinkKind::Ethernet), "10.0.0.20 → 10.0.0.10  eth:arp (10.0.0.20 is-at 02:00:00:00:00:0b)");
    let ann = eth(BCAST, MAC_A, 0x0806, &arp(1, MAC_A, NODE1, [0; 6], NODE1));
    assert!(line(&ann, LinkKind::Ethernet).ends_with("(announce 10.0.0.10)"));
}

#[test]
fn ipv6_neighbor_solicitation_and_extension_header() {
    let a: Ipv6Addr = "fe80::1".parse().unwrap();
    let m: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&"fe80::2".parse::<Ipv6Addr>().unwrap().octets());
    let f = eth(BCAST, MAC_A, 0x86dd, &ipv6(a, m, 58, &ns));
    assert_eq!(
        line(&f, LinkKind::Ethernet),
        "fe80::1 → ff02::1:ff00:2  eth:ipv6:icmpv6 (neighbor solicitation, who-has fe80::2)"
    );
    // hop-by-hop options header (as in MLD reports) before the ICMPv6 message
    let mut hbh = vec![58, 0, 5, 2, 0, 0, 1, 0];
    hbh.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
    let f = eth(BCAST, MAC_A, 0x86dd, &ipv6(a, m, 0, &hbh));
    assert_eq!(line(&f, LinkKind::Ethernet), "fe80::1 → ff02::1:ff00:2  eth:ipv6:icmpv6 (multicast listener report v2)");
}

#[test]
fn tcp_with_ports_and_flags() {
    let syn = ipv4(CON1, CON_REMOTE, 6, 64, &tcp(40000, 80, 0x02, &[]));
    assert_eq!(line(&syn, LinkKind::RawIp), "172.16.0.2 → 172.16.1.2  ip:tcp (40000 → 80 [S], 0 bytes)");
    let data = ipv4(CON_REMOTE, CON1, 6, 64, &tcp(80, 40000, 0x18, b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(line(&data, LinkKind::RawIp), "172.16.1.2 → 172.16.0.2  ip:tcp:data (80 → 40000 [P.], 17 bytes)");
}

#[test]
fn udp_plain_and_vlan() {
    let p = ipv4(NODE1, NODE2, 17, 64, &udp(5353, 53, b"q"));
    let mut tagged = vec![0, 100, 0x08, 0x00];
    tagged.extend_from_slice(&p);
    let f = eth(MAC_B, MAC_A, 0x8100, &tagged);
    assert_eq!(line(&f, LinkKind::Ethernet), "10.0.0.10 → 10.0.0.20  eth:vlan:ip:udp:data (5353 → 53, 1 bytes)");
}

#[test]
fn icmp_port_unreachable_names_the_datagram() {
    let original = ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &inner_ping()));
    let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&original[..28]);
    let p = ipv4(NODE2, NODE1, 1, 64, &err);
    assert_eq!(
        line(&p, LinkKind::RawIp),
        "10.0.0.20 → 10.0.0.10  ip:icmp (port unreachable for udp 10.0.0.10:9000 → 10.0.0.20:9000)"
    );
}

#[test]
fn unknown_ethertype_shows_macs() {
    let f = eth(BCAST, MAC_A, 0x88cc, &[1, 2, 3]);
    assert_eq!(line(&f, LinkKind::Ethernet), "02:00:00:00:00:0a → ff:ff:ff:ff:ff:ff  eth:ethertype (ethertype 0x88cc, 3 bytes)");
}

#[test]
fn truncated_frames_say_so() {
    assert_eq!(line(&[], LinkKind::Ethernet), "? → ?  eth [truncated ethernet header: 0 of 14 bytes]");
    assert_eq!(line(&[], LinkKind::RawIp), "? → ?  raw [empty packet]");
    assert_eq!(line(&[0x10, 0, 0], LinkKind::RawIp), "? → ?  raw [not an IP packet (version 1)]");

    let full = eth(MAC_B, MAC_A, 0x0800, &inner_ping());
    // cut inside the IPv4 header: MACs are known, IPs not yet
    let s = describe(&full[..14 + 10], LinkKind::Ethernet, &[]);
    assert_eq!(s.stack(), "eth:ip");
    assert_eq!(s.problem.as_deref(), Some("truncated ipv4 header: 10 of 20 bytes"));
    // cut inside the ICMP echo: addresses known, problem reported, still a line
    let s = describe(&full[..14 + 20 + 6], LinkKind::Ethernet, &[]);
    assert_eq!(s.stack(), "eth:ip:icmp");
    assert_eq!(s.src.as_deref(), Some("172.16.0.2"));
    assert!(s.problem.as_deref().unwrap().starts_with("truncated ipv4 packet"), "{s}");

    let outer = eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &inner_ping())));
    let s = describe(&outer[..14 + 20 + 8 + 30], LinkKind::Ethernet, &[9000]);
    assert_eq!(s.stack(), "eth:ip:udp");
    let inner = s.inner.as_ref().expect("inner decoded from what is there");
    assert_eq!(inner.src.as_deref(), Some("172.16.0.2"));
    assert!(inner.problem.is_some());
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn every_prefix_of_valid_frames_decodes_without_panic() {
    let inner = eth(MAC_B, MAC_A, 0x0800, &inner_ping());
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    vx.extend_from_slice(&inner);
    let a: Ipv6Addr = "fd00::1".parse().unwrap();
    let frames = [
        inner.clone(),
        eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &inner_ping()))),
        eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(1, 4789, &vx))),
        eth(BCAST, MAC_A, 0x0806, &arp(1, MAC_A, NODE1, [0; 6], NODE2)),
        eth(MAC_B, MAC_A, 0x86dd, &ipv6(a, a, 58, &icmp_echo(128, 1, 1))),
        eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 6, 64, &tcp(1, 2, 0x12, b"x"))),
        eth(MAC_B, MAC_A, 0x86dd, &ipv6(a, a, 44, &[17, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 2])),
    ];
    for f in &frames {
        for n in 0..=f.len() {
            for link in [LinkKind::Ethernet, LinkKind::RawIp] {
                let s = describe(&f[..n], link, &[9000]);
                let _ = s.to_string();
                let s = describe(&f[n..], link, &[9000]);
                let _ = s.to_string();
            }
        }
    }
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &inner_ping())));
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let len = (rng.next() % 200) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            // flip a few bytes of a valid tunnel frame: exercises deep paths with bad lengths
            let mut b = base.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % b.len();
                b[at] = rng.next() as u8;
            }
            let cut = (rng.next() as usize) % (b.len() + 1);
            b.truncate(cut);
            b
        };
        for link in [LinkKind::Ethernet, LinkKind::RawIp] {
            let s = describe(&bytes, link, &[9000, 4789]);
            assert!(!s.protocols.is_empty());
            let _ = s.to_string();
        }
    }
}

#[test]
fn link_kind_from_hardware_type() {
    assert_eq!(LinkKind::from_arphrd(1), Some(LinkKind::Ethernet));
    assert_eq!(LinkKind::from_arphrd(0xfffe), Some(LinkKind::RawIp));
    assert_eq!(LinkKind::from_arphrd(772), Some(LinkKind::Ethernet));
    assert_eq!(LinkKind::from_arphrd(824), None); // ARPHRD_IEEE80211
    assert_eq!(LinkKind::Ethernet.pcap_linktype(), 1);
    assert_eq!(LinkKind::RawIp.pcap_linktype(), 101);
}
