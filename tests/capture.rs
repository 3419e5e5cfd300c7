//! The talk's encapsulation demo: a ping from con1 on node 1 to 172.16.1.2, captured by
//! `cnet capture` on node 2's enp0s8 (the outer UDP), tun0 (the bare inner packet) and br0;
//! stage 3's lesson in MAC addresses (`-e`); fragments; what `--only` accepts.

mod common;
use common::*;

fn capture_demo(backend: &str, overlay_dev: &str) -> Run {
    sandbox(&format!(
        r#"
cnet up overlay --backend {backend} -q
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2 > /dev/null   # warm up ARP
for dev in enp0s8 {overlay_dev} br0; do
  # -e on the overlay device: tun0 has no link header to show (vxlan0 has one).
  e=""; [ $dev = {overlay_dev} ] && e=-e
  cnet capture node2 $dev $e --only icmp --timeout 3 --pcap $T/$dev.pcap > $T/$dev.txt 2> $T/$dev.err &
done
# Each capture says when it listens.
for dev in enp0s8 {overlay_dev} br0; do wait_for 100 grep -q "^capturing on $dev" $T/$dev.err; done
cnet exec node1/con1 -- ping -c3 -i 0.2 -W2 172.16.1.2 > /dev/null
wait
for dev in enp0s8 {overlay_dev} br0; do
  mark $dev; cat $T/$dev.txt
  mark $dev.err; cat $T/$dev.err
  mark $dev.tcpdump; tcpdump -nr $T/$dev.pcap 2>/dev/null
done
mark end
cnet down -q
{LEFTOVERS}"#
    ))
}

fn count_lines(text: &str, want: &[&str]) -> usize {
    text.lines().filter(|l| want.iter().all(|w| l.contains(w))).count()
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn udp_tunnel_encapsulation_is_visible() {
    require_root();
    let r = capture_demo("udp", "tun0");
    r.ok();
    let wire = r.section("enp0s8");
    assert!(
        count_lines(
            &wire,
            &["10.0.0.10 → 10.0.0.20", "eth:ip:udp (9000 → 9000", "inner 172.16.0.2 → 172.16.1.2  ip:icmp (echo request"]
        ) >= 3,
        "{wire}"
    );
    assert!(
        count_lines(
            &wire,
            &["10.0.0.20 → 10.0.0.10", "eth:ip:udp (9000 → 9000", "inner 172.16.1.2 → 172.16.0.2  ip:icmp (echo reply"]
        ) >= 3,
        "{wire}"
    );
    let tun = r.section("tun0");
    assert!(count_lines(&tun, &["172.16.0.2 → 172.16.1.2  ip:icmp (echo request"]) >= 3, "bare inner packet on tun0: {tun}");
    assert!(!tun.contains("eth:"), "no Ethernet header on a TUN device: {tun}");
    let br = r.section("br0");
    assert!(count_lines(&br, &["172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request"]) >= 3, "{br}");
    // tcpdump reads the pcap files and sees the same packets.
    assert!(
        count_lines(&r.section("enp0s8.tcpdump"), &["10.0.0.10.9000 > 10.0.0.20.9000: UDP"]) >= 3,
        "{}",
        r.section("enp0s8.tcpdump")
    );
    assert!(count_lines(&r.section("tun0.tcpdump"), &["172.16.0.2 > 172.16.1.2: ICMP echo request"]) >= 3);
    // -e on tun0 says once that there is nothing to show; each capture ends with its count.
    let err = r.section("tun0.err");
    assert_eq!(err.matches("tun0 has no link-layer header").count(), 1, "{err}");
    assert!(closing_count(&err, "tun0") >= 6, "{err}");
    assert!(closing_count(&r.section("enp0s8.err"), "enp0s8") >= 6, "{}", r.section("enp0s8.err"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn vxlan_encapsulation_is_visible() {
    require_root();
    let r = capture_demo("vxlan", "vxlan0");
    r.ok();
    let wire = r.section("enp0s8");
    assert!(
        count_lines(
            &wire,
            &["10.0.0.10 → 10.0.0.20", "eth:ip:udp:vxlan", "inner 172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request"]
        ) >= 3,
        "{wire}"
    );
    assert!(count_lines(&r.section("enp0s8.tcpdump"), &["VXLAN"]) >= 3, "{}", r.section("enp0s8.tcpdump"));
    // vxlan0 is an Ethernet device: with -e its frames show their MACs.
    let vx = r.section("vxlan0");
    assert!(count_lines(&vx, &[":", " → ", "  172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request"]) >= 3, "{vx}");
    assert!(vx.lines().all(|l| l.split_whitespace().nth(2).is_some_and(is_mac)), "a MAC first on every line: {vx}");
    assert!(!r.section("vxlan0.err").contains("no link-layer header"));
    assert_nothing_left(&r);
}

/// `aa:bb:cc:dd:ee:ff`
fn is_mac(s: &str) -> bool {
    s.len() == 17 && s.split(':').count() == 6 && s.split(':').all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok())
}

/// The count in a capture's closing line: `N [proto ]packets seen on IFACE in T s`.
fn closing_count(err: &str, iface: &str) -> u64 {
    let line = err
        .lines()
        .find(|l| l.contains(&format!(" seen on {iface} in ")))
        .unwrap_or_else(|| panic!("no closing line for {iface} in {err:?}"));
    line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count in {line:?}"))
}

/// Stage 3's lesson, in MAC addresses: on node 2's enp0s8, a ping from con1 on node 1 to a
/// container of node 2 is addressed to a container by IP, but to node 2 by MAC (node 1
/// routed it: next hop 10.0.0.20). Its reply goes back the same way. Then a ping of 3000
/// bytes, cut in three pieces by con1 (the reply by con1 on node 2), each piece marked.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage3_macs_are_the_nodes_and_fragments_are_marked() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up multi-node -q
mark macs
cnet exec node1 -- cat /sys/class/net/enp0s8/address
cnet exec node2 -- cat /sys/class/net/enp0s8/address
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2 > /dev/null   # warm up ARP
cnet capture node2 enp0s8 -e --only icmp -c 4 --timeout 5 > $T/e.txt 2> $T/e.err &
wait_for 100 grep -q "^capturing on enp0s8" $T/e.err
cnet exec node1/con1 -- ping -c2 -i 0.2 -W2 172.16.1.2 > /dev/null
wait
mark e; cat $T/e.txt
mark e.err; cat $T/e.err
cnet capture node2 enp0s8 --only icmp -c 6 --timeout 5 --pcap $T/f.pcap > $T/f.txt 2> $T/f.err &
wait_for 100 grep -q "^capturing on enp0s8" $T/f.err
cnet exec node1/con1 -- ping -c1 -s 3000 -W2 172.16.1.2 > /dev/null
wait
mark frag; cat $T/f.txt
mark frag.tcpdump; tcpdump -nv -r $T/f.pcap 2>/dev/null
# nothing of this protocol: stdout stays empty, stderr says so
cnet capture node2 br0 --only tcp --timeout 0.3 > $T/n.txt 2> $T/n.err
mark none; cat $T/n.txt
mark none.err; cat $T/n.err
mark end
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let macs: Vec<String> = r.section("macs").lines().map(|l| l.trim().to_string()).collect();
    assert!(macs.len() == 2 && macs.iter().all(|m| is_mac(m)) && macs[0] != macs[1], "{macs:?}");
    let (node1, node2) = (&macs[0], &macs[1]);
    let e = r.section("e");
    let request = format!("in  {node1} → {node2}  172.16.0.2 → 172.16.1.2  eth:ip:icmp (echo request");
    let reply = format!("out {node2} → {node1}  172.16.1.2 → 172.16.0.2  eth:ip:icmp (echo reply");
    assert_eq!(count_lines(&e, &[&request]), 2, "{e}");
    assert_eq!(count_lines(&e, &[&reply]), 2, "{e}");
    assert_eq!(closing_count(&r.section("e.err"), "enp0s8"), 4, "{}", r.section("e.err"));

    // Request and reply, each in three pieces: 1480 + 1480 + 48 bytes of ICMP.
    let frag = r.section("frag");
    for (dir, from, to) in [("in ", "172.16.0.2", "172.16.1.2"), ("out", "172.16.1.2", "172.16.0.2")] {
        let mine: Vec<&str> = frag.lines().filter(|l| l.contains(&format!("{dir} {from} → {to}  eth:ip:icmp"))).collect();
        assert_eq!(mine.len(), 3, "{frag}");
        assert!(mine[0].contains("(echo ") && mine[0].ends_with(" off=0 MF"), "{frag}");
        assert!(mine[1].contains("(continued, 1480 bytes) frag id=") && mine[1].ends_with(" off=1480 MF"), "{frag}");
        assert!(mine[2].contains("(continued, 48 bytes) frag id=") && mine[2].ends_with(" off=2960"), "{frag}");
        // One packet: the same id on its three pieces, the one tcpdump reads in the pcap.
        let ids: Vec<&str> = mine.iter().filter_map(|l| l.split("frag id=").nth(1)?.split(' ').next()).collect();
        assert!(ids.len() == 3 && ids.iter().all(|i| *i == ids[0]), "{frag}");
        let td = r.section("frag.tcpdump");
        for off in ["0", "1480", "2960"] {
            assert!(
                td.contains(&format!("id {}, offset {off}, flags", ids[0])),
                "id {} offset {off} in
{td}",
                ids[0]
            );
        }
    }
    // A capture that saw nothing prints nothing, and says so on stderr.
    assert_eq!(r.section("none"), "");
    let none = r.section("none.err");
    assert!(none.contains("0 tcp packets seen on br0 in 0."), "{none}");
    assert_nothing_left(&r);
}

/// `--only` takes the protocols the decoder knows, and refuses anything else in one line
/// that names them (refused before anything is opened: no root, no sandbox needed).
#[test]
fn only_refuses_an_unknown_protocol() {
    let out = std::process::Command::new(cnet_bin())
        .args(["capture", "node2", "enp0s8", "--only", "bogus"])
        .output()
        .expect("run cnet");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains("'bogus'") && lines[0].contains("icmp, icmpv6, tcp, udp, vxlan"), "{err}");
}
