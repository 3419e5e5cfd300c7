//! The talk's encapsulation demo: a ping from con1 on node 1 to 172.16.1.2, captured by
//! `cnet capture` on node 2's enp0s8 (the outer UDP), tun0 (the bare inner packet) and br0.

mod common;
use common::*;

fn capture_demo(backend: &str, overlay_dev: &str) -> Run {
    sandbox(&format!(
        r#"
cnet up overlay --backend {backend} -q
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2 > /dev/null   # warm up ARP
for dev in enp0s8 {overlay_dev} br0; do
  cnet capture node2 $dev --only icmp --timeout 3 --pcap $T/$dev.pcap > $T/$dev.txt 2> $T/$dev.err &
done
# Each capture says when it listens.
for dev in enp0s8 {overlay_dev} br0; do wait_for 100 grep -q "^capturing on $dev" $T/$dev.err; done
cnet exec node1/con1 -- ping -c3 -i 0.2 -W2 172.16.1.2 > /dev/null
wait
for dev in enp0s8 {overlay_dev} br0; do
  mark $dev; cat $T/$dev.txt
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
    assert_nothing_left(&r);
}
