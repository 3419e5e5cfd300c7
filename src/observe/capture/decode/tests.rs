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

/// One piece of a fragmented IPv4 packet: `offset` in bytes (a multiple of 8), `more` the MF
/// flag, `payload` this piece's bytes.
fn ipv4_piece(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = ipv4(src, dst, proto, 64, payload);
    p[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&flags.to_be_bytes());
    p
}

/// A 3000-byte ping cut as the kernel cuts it for a 1500-byte MTU: 1480 + 1480 + 48 bytes.
fn fragmented_ping(src: [u8; 4], dst: [u8; 4], id: u16) -> Vec<Vec<u8>> {
    let mut icmp = icmp_echo(8, 77, 1);
    icmp.resize(3008, 0xab);
    [(0, true), (1480, true), (2960, false)]
        .iter()
        .map(|&(off, more)| ipv4_piece(src, dst, 1, id, off, more, &icmp[off..(off + 1480).min(icmp.len())]))
        .collect()
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
fn link_addresses_come_first_with_e() {
    let f = eth(MAC_B, MAC_A, 0x0800, &inner_ping());
    let s = describe(&f, LinkKind::Ethernet, &[9000]);
    assert_eq!(s.link, Some(("02:00:00:00:00:0a".to_string(), "02:00:00:00:00:0b".to_string())));
    assert_eq!(
        s.with_link_addrs().to_string(),
        "02:00:00:00:00:0a → 02:00:00:00:00:0b  172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request id=77 seq=1 ttl=63)"
    );
    // Without -e the line is as before.
    assert_eq!(s.to_string(), "172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request id=77 seq=1 ttl=63)");
    // ARP: the MACs of the frame, then the addresses ARP asks about.
    let req = eth(BCAST, MAC_A, 0x0806, &arp(1, MAC_A, NODE1, [0; 6], NODE2));
    assert_eq!(
        describe(&req, LinkKind::Ethernet, &[]).with_link_addrs().to_string(),
        "02:00:00:00:00:0a → ff:ff:ff:ff:ff:ff  10.0.0.10 → 10.0.0.20  eth:arp (who-has 10.0.0.20 tell 10.0.0.10)"
    );
}

#[test]
fn link_addresses_of_inner_frames_but_none_on_tun() {
    // VXLAN carries a whole Ethernet frame: its MACs are shown too.
    let mac_c = [0x02, 0, 0, 0, 0, 0x0c];
    let mac_d = [0x02, 0, 0, 0, 0, 0x0d];
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(&eth(mac_d, mac_c, 0x0800, &inner_ping()));
    let f = eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(51234, 4789, &vx)));
    assert_eq!(
        describe(&f, LinkKind::Ethernet, &[9000]).with_link_addrs().to_string(),
        "02:00:00:00:00:0a → 02:00:00:00:00:0b  10.0.0.10 → 10.0.0.20  eth:ip:udp:vxlan (51234 → 4789, vni 1)  |  \
         inner 02:00:00:00:00:0c → 02:00:00:00:00:0d  172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request id=77 seq=1 ttl=63)"
    );
    // A tunnel datagram's inner packet has no link header: nothing to show, outer MACs only.
    let f = eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &inner_ping())));
    let line = describe(&f, LinkKind::Ethernet, &[9000]).with_link_addrs().to_string();
    assert!(line.starts_with("02:00:00:00:00:0a → 02:00:00:00:00:0b  10.0.0.10 → 10.0.0.20  eth:ip:udp"), "{line}");
    assert!(line.contains("|  inner 172.16.0.2 → 172.16.1.2  ip:icmp"), "{line}");
    // On a TUN device: no link header, so -e changes nothing.
    let s = describe(&inner_ping(), LinkKind::RawIp, &[9000]);
    assert_eq!(s.link, None);
    assert_eq!(s.with_link_addrs().to_string(), s.to_string());
}

#[test]
fn ipv4_fragments_are_marked() {
    let pieces = fragmented_ping(CON1, CON_REMOTE, 4242);
    let lines: Vec<String> = pieces.iter().map(|p| line(&eth(MAC_B, MAC_A, 0x0800, p), LinkKind::Ethernet)).collect();
    assert_eq!(
        lines,
        [
            "172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request id=77 seq=1 ttl=64) frag id=4242 off=0 MF",
            "172.16.0.2 → 172.16.1.2  eth:ip:icmp (continued, 1480 bytes) frag id=4242 off=1480 MF",
            "172.16.0.2 → 172.16.1.2  eth:ip:icmp (continued, 48 bytes) frag id=4242 off=2960",
        ]
    );
    let first = describe(&pieces[0], LinkKind::RawIp, &[]);
    assert_eq!(first.fragment, Some(Fragment { id: 4242, offset: 0, more: true }));
    assert_eq!(first.problem, None);
    // A whole packet (DF set, no offset, no MF) is not marked.
    assert_eq!(describe(&inner_ping(), LinkKind::RawIp, &[]).fragment, None);
    // An unknown protocol continued is still marked.
    let odd = ipv4_piece(NODE1, NODE2, 253, 7, 8, false, b"12345678");
    assert_eq!(line(&odd, LinkKind::RawIp), "10.0.0.10 → 10.0.0.20  ip (proto 253 continued, 8 bytes) frag id=7 off=8");
}

#[test]
fn fragments_inside_a_tunnel_and_of_the_tunnel() {
    // Inner: each piece of a large ping crosses the tunnel in a datagram of its own.
    let pieces = fragmented_ping(CON1, CON_REMOTE, 99);
    let outer = eth(MAC_B, MAC_A, 0x0800, &ipv4(NODE1, NODE2, 17, 64, &udp(9000, 9000, &pieces[1])));
    assert_eq!(
        line(&outer, LinkKind::Ethernet),
        "10.0.0.10 → 10.0.0.20  eth:ip:udp (9000 → 9000, 1500 bytes)  |  \
         inner 172.16.0.2 → 172.16.1.2  ip:icmp (continued, 1480 bytes) frag id=99 off=1480 MF"
    );
    // Outer: the datagram itself cut in two. The first piece holds the UDP header and the
    // start of the inner packet, whose lengths run past it: no truncation to report.
    let datagram = udp(9000, 9000, &pieces[0]);
    let (head, tail) = datagram.split_at(1000);
    let first = ipv4_piece(NODE1, NODE2, 17, 5, 0, true, head);
    let s = describe(&eth(MAC_B, MAC_A, 0x0800, &first), LinkKind::Ethernet, &[9000]);
    assert_eq!(s.problem, None, "{s}");
    assert_eq!(s.fragment, Some(Fragment { id: 5, offset: 0, more: true }));
    let inner = s.inner.as_ref().expect("the inner packet decoded from its first bytes");
    assert_eq!(inner.problem, None, "{s}");
    assert_eq!(inner.fragment, Some(Fragment { id: 99, offset: 0, more: true }));
    assert_eq!(
        s.to_string(),
        "10.0.0.10 → 10.0.0.20  eth:ip:udp (9000 → 9000, 992 bytes) frag id=5 off=0 MF  |  \
         inner 172.16.0.2 → 172.16.1.2  ip:icmp (echo request id=77 seq=1 ttl=64) frag id=99 off=0 MF"
    );
    let second = ipv4_piece(NODE1, NODE2, 17, 5, 1000, false, tail);
    assert_eq!(line(&second, LinkKind::RawIp), "10.0.0.10 → 10.0.0.20  ip:udp (continued, 508 bytes) frag id=5 off=1000");
    // A packet that is not a fragment still reports a real truncation.
    let whole = ipv4(NODE1, NODE2, 17, 64, &datagram);
    assert!(describe(&whole[..1020], LinkKind::RawIp, &[9000]).problem.is_some());
}

#[test]
fn ipv6_fragments_are_marked() {
    let a: Ipv6Addr = "fd00::1".parse().unwrap();
    let b: Ipv6Addr = "fd00::2".parse().unwrap();
    // fragment header: next header, reserved, offset<<3 | M, identification
    let mut first = vec![58, 0, 0x00, 0x01, 0, 0, 0x30, 0x39];
    first.extend_from_slice(&icmp_echo(128, 5, 9)[..16]);
    assert_eq!(
        line(&ipv6(a, b, 44, &first), LinkKind::RawIp),
        "fd00::1 → fd00::2  ipv6:icmpv6 (echo request id=5 seq=9 hlim=64) frag id=12345 off=0 MF"
    );
    let mut last = vec![58, 0, 0x05, 0xc8, 0, 0, 0x30, 0x39];
    last.extend_from_slice(&[0; 24]);
    assert_eq!(
        line(&ipv6(a, b, 44, &last), LinkKind::RawIp),
        "fd00::1 → fd00::2  ipv6:icmpv6 (continued, 24 bytes) frag id=12345 off=1480"
    );
    // An atomic fragment (offset 0, no M) is a whole packet: not marked.
    let mut atomic = vec![58, 0, 0, 0, 0, 0, 0, 1];
    atomic.extend_from_slice(&icmp_echo(128, 5, 9)[..16]);
    assert_eq!(describe(&ipv6(a, b, 44, &atomic), LinkKind::RawIp, &[]).fragment, None);
}

#[test]
fn every_protocol_the_decoder_names_is_one_only_accepts() {
    // Decode all the frames of these tests and random bytes; every name in a stack must be
    // in PROTOCOLS, or `--only` would refuse a protocol the capture prints.
    fn all_in(s: &PacketSummary) {
        for p in &s.protocols {
            assert!(PROTOCOLS.contains(p), "{p} is not in PROTOCOLS");
        }
        if let Some(i) = &s.inner {
            all_in(i);
        }
    }
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = (rng.next() % 120) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        for link in [LinkKind::Ethernet, LinkKind::RawIp] {
            all_in(&describe(&bytes, link, &[9000]));
        }
    }
    for proto in 0..=255u8 {
        all_in(&describe(&ipv4(NODE1, NODE2, proto, 64, &[0; 40]), LinkKind::RawIp, &[9000]));
        all_in(&describe(&ipv4_piece(NODE1, NODE2, proto, 1, 8, false, &[0; 8]), LinkKind::RawIp, &[]));
    }
    for ethertype in [0x0800, 0x86dd, 0x0806, 0x8100, 0x0100, 0x88cc] {
        all_in(&describe(&eth(MAC_B, MAC_A, ethertype, &[0x45; 60]), LinkKind::Ethernet, &[9000]));
    }
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
        eth(MAC_B, MAC_A, 0x0800, &ipv4_piece(NODE1, NODE2, 17, 3, 0, true, &udp(9000, 9000, &inner_ping())[..40])),
        eth(MAC_B, MAC_A, 0x0800, &fragmented_ping(CON1, CON_REMOTE, 1)[1]),
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
