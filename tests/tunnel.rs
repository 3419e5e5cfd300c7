//! cnet's own tunnel: it drops and counts what it must not forward, keeps forwarding, never
//! fragments, moves bulk TCP intact, and dies with `down`.

mod common;
use common::*;

/// Datagrams a hostile or broken sender on node 2 throws at node 1's tunnel (port 9000).
const INJECT: &str = r#"
import socket, struct
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
def icmp():
    p = struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"cnet-test"
    return p[:2] + struct.pack("!H", csum(p)) + p[4:]
def ip4(src, dst, payload, bad=False):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, 1, 0, socket.inet_aton(src), socket.inet_aton(dst))
    c = csum(h) ^ (0xffff if bad else 0)
    return h[:10] + struct.pack("!H", c) + h[12:] + payload
node1 = ("10.0.0.10", 9000)
# From the peer's own address and port: raw UDP, since node 2's tunnel holds port 9000.
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
def from_peer(data):
    raw.sendto(struct.pack("!HHHH", 9000, 9000, 8 + len(data), 0) + data, node1)
from_peer(b"\xff" + b"garbage" * 8)                                      # not IPv4
from_peer(bytes([0x45, 0, 0, 40, 0, 0]))                                 # truncated
from_peer(bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(32) + bytes(8))   # IPv6, not IPv4
from_peer(ip4("172.16.1.2", "172.16.0.2", icmp(), bad=True))             # bad header checksum
from_peer(b"\xc0GS\x01" + bytes(10) + ip4("172.16.1.2", "172.16.0.2", icmp()))  # gso frame, wire not agreed
from_peer(ip4("172.16.9.9", "172.16.0.2", icmp()))                       # spoofed source
from_peer(ip4("10.0.0.30", "172.16.0.2", icmp()))                        # spoofed: another node's IP
# From an address:port that is no peer.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.0.20", 9999))
u.sendto(ip4("172.16.1.2", "172.16.0.2", icmp()), node1)
print("injected")
"#;

fn drops(status_json: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(status_json).expect("status json");
    v[0]["tunnel"]["drops"].clone()
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn tunnel_drops_counts_and_keeps_forwarding() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up overlay -q
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2 > /dev/null
cat > $T/inject.py <<'PY'
{INJECT}
PY
mark inject
cnet exec node2 -- python3 $T/inject.py
sleep 0.6
mark after
cnet exec node1 -- cnet status --host --json
mark ping
cnet exec node1/con1 -- ping -c2 -i 0.2 -W2 172.16.1.2
mark mtu-ok
cnet exec node1 -- ping -c1 -W2 -M do -s 1444 172.16.1.2
mark mtu-big
cnet exec node1 -- ping -c1 -W2 -M do -s 1445 172.16.1.2 2>&1 || echo "exit=$?"
mark gso-on-1500
cnet exec node1 -- cnet tunnel --dev tun9 --local 10.0.0.10:9001 --peer 10.0.0.20:9001=172.16.1.0/24 --wire gso 2>&1 || echo "exit=$?"
mark down
cnet down
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(r.section("inject").contains("injected"), "{}", r.stderr);
    let d = drops(&r.section("after"));
    for (reason, at_least) in [("not_ipv4", 2), ("truncated", 1), ("malformed", 2), ("spoofed_source", 2), ("unknown_peer", 1)] {
        assert!(d[reason].as_u64().unwrap_or(0) >= at_least, "{reason}: {d}");
    }
    assert_eq!(ping_ttls(&r.section("ping")), vec![62, 62], "still forwarding after the garbage");
    assert_eq!(ping_ttls(&r.section("mtu-ok")), vec![63], "a packet of exactly tun0's MTU (1472) crosses");
    assert!(r.section("mtu-big").to_lowercase().contains("message too long"), "{}", r.section("mtu-big"));
    // The gso wire on the lab's 1500-byte cables: refused at start, in one line.
    let g = r.section("gso-on-1500");
    assert!(g.contains("the path to 10.0.0.20:9001 has MTU 1500: it needs 65535") && g.trim_end().ends_with("exit=1"), "{g}");
    assert_eq!(g.lines().count(), 2, "{g}");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn bulk_tcp_arrives_intact() {
    require_root();
    bulk_tcp("");
}

/// 300 MB from con1 on node 1 to con1 on node 2 through the tunnel; SHA-256 on both sides.
/// Also which framing crossed the underlay: cnet's gso frames, big (super-packets crossing
/// whole), with `--backend udp-gso`, and none of them on the default wire.
fn bulk_tcp(backend: &str) {
    let r = sandbox(&format!(
        r#"
cnet up overlay {backend} -q
# Datagrams in cnet's gso framing (they start with its magic c0 47 53 01) above 20 KB; and,
# as the control that capture works at all, any above 20 KB (UDP GSO trains qualify too).
cnet exec node1 -- timeout 20 tcpdump -l -ni enp0s8 -c 3 'udp port 9000 and udp[8:4] = 0xc0475301 and greater 20000' > $T/big.out 2> $T/big.err &
cnet exec node1 -- timeout 20 tcpdump -l -ni enp0s8 -c 3 'udp port 9000 and greater 20000' > $T/any.out 2> $T/any.err &
wait_for 200 grep -qs listening $T/big.err
wait_for 200 grep -qs listening $T/any.err
{SINK_PY}{BULK_300MB}sleep 0.5   # the tunnel rewrites its counters every 250 ms
mark stats
cnet exec node1 -- cnet status --host --json
pkill -KILL tcpdump || true; wait  # (SIGINT waits for a packet the filter lets through)
mark big
cat $T/big.out
mark any
cat $T/any.out
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let big = r.section("big");
    let any = r.section("any");
    assert_eq!(
        any.lines().filter(|l| l.contains("10.0.0.10.9000 > 10.0.0.20.9000: UDP, length")).count(),
        3,
        "capture works: {any}"
    );
    if backend.contains("udp-gso") {
        assert_eq!(big.lines().filter(|l| l.contains("10.0.0.10.9000 > 10.0.0.20.9000: UDP, length")).count(), 3, "{big}");
    } else {
        assert!(!big.contains("UDP, length"), "the default wire never sends gso frames: {big}");
    }
    let sent = r.section("sent");
    let received = r.section("received");
    assert!(sent.starts_with("314572800 "), "{sent}");
    assert_eq!(sent.trim(), received.trim(), "the bytes must arrive intact");
    let v: serde_json::Value = serde_json::from_str(&r.section("stats")).unwrap();
    assert!(v[0]["tunnel"]["tun_to_udp"]["bytes"].as_u64().unwrap() > 300_000_000, "it went through the tunnel: {v}");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn plain_path_is_correct_too() {
    require_root();
    // The path the tunnel falls back to where the kernel lacks TUN offloads.
    let r = sandbox(&format!(
        r#"
CNET_TUNNEL_NO_OFFLOAD=1 cnet up overlay -q
mark status
cnet status --json
mark test
cnet test --json
{SINK_PY}cnet exec node2/con2 -- python3 $T/sink.py > $T/sink.out &
wait_for 200 grep -qs listening $T/sink.out
mark sent
cnet exec node1/con2 -- python3 -c '
import hashlib, random, socket
random.seed(7); data = random.randbytes(50 << 20)
c = socket.create_connection(("172.16.1.3", 7000)); c.sendall(data); c.close()
print(len(data), hashlib.sha256(data).hexdigest())'
wait
mark received
tail -1 $T/sink.out
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let links = status_links(&r.section("status"), "tun0");
    assert!(links.len() == 2 && links.iter().all(|(p, _)| p == "plain"), "{links:?}");
    assert!(Checks::parse(&r.section("test")).all_passed(48), "{}", r.section("test"));
    assert_eq!(r.section("sent").trim(), r.section("received").trim(), "50 MB intact over the plain path");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn gso_wire_passes_super_packets_whole() {
    require_root();
    // The explicit same-host mode: the lab's cables carry 64 KB, tun0's MTU is 65535 - 42.
    let r = sandbox(&format!(
        r#"
cnet up overlay --backend udp-gso -q
mark test
cnet test --json
mark status
cnet status --json
mark ping
cnet exec node1/con1 -- ping -c2 -i 0.2 -W2 172.16.1.2
mark mtu-ok
cnet exec node1 -- ping -c1 -W2 -M do -s 65465 172.16.1.1
mark mtu-big
cnet exec node1 -- ping -c1 -W2 -M do -s 65466 172.16.1.1 2>&1 || echo "exit=$?"
mark down
cnet down
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(Checks::parse(&r.section("test")).all_passed(48), "{}", r.section("test"));
    let st = r.section("status");
    let links = status_links(&st, "tun0");
    assert!(
        links.len() == 2 && links.iter().all(|(p, mtu)| p.starts_with("offload, gso wire") && *mtu == Some(65493)),
        "{links:?}"
    );
    assert_eq!(ping_ttls(&r.section("ping")), vec![62, 62]);
    // Node 2 answers itself: no container's 1500-byte link in the way.
    assert_eq!(ping_ttls(&r.section("mtu-ok")), vec![64], "a packet of exactly tun0's MTU (65493) crosses");
    assert!(r.section("mtu-big").to_lowercase().contains("message too long"), "{}", r.section("mtu-big"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn gso_wire_bulk_tcp_arrives_intact() {
    require_root();
    bulk_tcp("--backend udp-gso");
}
