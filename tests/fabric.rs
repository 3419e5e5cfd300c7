//! Why overlays exist: the same two nodes on a routed network (`--fabric routed`), where
//! stage 3's static routes are refused and stage 4's overlay works.

mod common;
use common::*;

/// Stage 3 on a routed fabric: the kernel refuses the talk's route (the next hop is not
/// on-link); `up` says so and why, exits 1, and leaves nothing.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage3_on_a_routed_fabric_is_refused_and_explained() {
    require_root();
    let r = sandbox(&format!(
        r#"
mark up
rc=0; cnet up multi-node --fabric routed -q 2> $T/err || rc=$?
echo "exit=$rc"; cat $T/err
{LEFTOVERS}"#
    ));
    r.ok();
    let up = r.section("up");
    assert!(up.contains("exit=1"), "{up}");
    assert!(up.contains("ip route add 172.16.1.0/24 via 10.0.0.20 dev enp0s8") && up.contains("Network is unreachable"), "{up}");
    for why in ["not on-link", "has never heard of 172.16.1.0/24", "BGP", "encapsulate", "--direct-routing"] {
        assert!(up.contains(why), "{why}: {up}");
    }
    assert_eq!(up.lines().filter(|l| l.starts_with("cnet: error")).count(), 1, "one line: {up}");
    assert_nothing_left(&r);
}

/// With the fabric taught the pod routes (what a BGP speaker would announce), stage 3 works
/// through the router: one more hop, TTL 61 container to remote container.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage3_through_a_taught_fabric() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up multi-node --fabric routed --advertise-pod-routes -q
mark test
cnet test --json
mark ping
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2
mark router
cnet exec router -- ip route
mark trace
cnet trace node1/con1 node2/con1 --json
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let t = Checks::parse(&r.section("test"));
    assert!(t.all_passed(48), "{:?}", t.failed);
    assert_eq!(ping_ttls(&r.section("ping")), vec![61], "three routers: node 1, the router, node 2");
    assert!(r.section("router").contains("172.16.1.0/24 via 10.0.0.20"), "{}", r.section("router"));
    let trace: serde_json::Value = serde_json::from_str(&r.section("trace")).expect("trace --json");
    let at: Vec<&str> = trace["hops"].as_array().unwrap().iter().map(|h| h["at"].as_str().unwrap()).collect();
    assert_eq!(at, ["node1/con1", "node1", "router", "node2", "node2/con1"], "{trace}");
    assert_eq!(trace["ttl"].as_u64(), Some(61), "{trace}");
    assert_nothing_left(&r);
}

/// Stage 4 on a routed fabric works unchanged with both overlays: 48/48 with the talk's
/// inner TTLs; the router sees only node addresses and has no route to the pods.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage4_over_a_routed_fabric() {
    require_root();
    for (backend, port) in [("udp", "9000"), ("vxlan", "4789")] {
        let r = sandbox(&format!(
            r#"
cnet up overlay --fabric routed --backend {backend} -q
mark test
cnet test --json
mark ping
cnet exec node1/con1 -- ping -c1 -W2 172.16.1.2
cnet exec node1 -- ping -c1 -W2 172.16.1.2
mark capture
cnet capture router eth2 --only icmp --timeout 3 > $T/cap 2> $T/cap.err &
wait_for 100 grep -q "^capturing on eth2" $T/cap.err
cnet exec node1/con1 -- ping -c2 -i 0.2 -W2 172.16.1.2 > /dev/null
wait
cat $T/cap
mark router-routes
cnet exec router -- ip route
cnet down -q
{LEFTOVERS}"#
        ));
        r.ok();
        let t = Checks::parse(&r.section("test"));
        assert!(t.all_passed(48), "{backend}: {:?}", t.failed);
        assert_eq!(ping_ttls(&r.section("ping")), vec![62, 63], "{backend}: the router sees only the outer packet");
        let cap = r.section("capture");
        assert!(cap.lines().count() >= 4, "{backend}: {cap}");
        for l in cap.lines() {
            // The outer packet, before the inner one it carries: node to node, the overlay's port.
            let outer = l.split('|').next().unwrap();
            assert!(outer.contains("10.0.0.10 → 10.0.0.20") || outer.contains("10.0.0.20 → 10.0.0.10"), "{backend}: {l}");
            assert!(!outer.contains("172.16.") && outer.contains(port), "{backend}: {l}");
        }
        let routes = r.section("router-routes");
        assert!(!routes.contains("172.16."), "{backend}: the router knows no pod subnet: {routes}");
        assert_nothing_left(&r);
    }
}

/// Direct routing with three nodes, nodes 2 and 3 on one subnet: they route to each other
/// directly, everyone else through the overlay; every check passes.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn direct_routing_mixes_direct_and_encapsulated() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up overlay --fabric routed --nodes 3 --direct-routing -q
mark test
cnet test --json
mark routes2
cnet exec node2 -- ip route
mark direct
cnet trace node2/con1 172.16.2.2 --json
mark overlay
cnet trace node2/con1 172.16.0.2 --json
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let t = Checks::parse(&r.section("test"));
    assert!(t.all_passed(108), "{:?}", t.failed);
    let routes = r.section("routes2");
    assert!(routes.contains("172.16.2.0/24 via 10.0.0.30 dev enp0s8"), "direct to node 3: {routes}");
    assert!(!routes.contains("172.16.0.0/24 via"), "node 1 only through the overlay: {routes}");
    assert!(!r.section("direct").contains("\"encap\": {"), "node 2 to node 3: no encapsulation\n{}", r.section("direct"));
    assert!(r.section("overlay").contains("\"encap\": {"), "node 2 to node 1: the overlay\n{}", r.section("overlay"));
    assert_nothing_left(&r);
}

/// On a real machine, stage 3 with a peer off this node's subnet is refused before
/// anything is built, with the same explanation.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn host_stage3_with_an_off_subnet_peer_builds_nothing() {
    require_root();
    let r = sandbox(&format!(
        r#"
hostname vm
ip link add enp0s8 type veth peer name lan0
ip addr add 10.0.0.10/29 dev enp0s8
ip link set enp0s8 up; ip link set lan0 up
mark up
rc=0; cnet up multi-node --host 2> $T/err > /dev/null || rc=$?
echo "exit=$rc"; cat $T/err
mark overlay
cnet up overlay --host -q && echo "stage 4 builds"
cnet down -q
{}"#,
        vm_leftovers()
    ));
    r.ok();
    let up = r.section("up");
    assert!(up.contains("exit=1") && up.contains("not on this node's subnet 10.0.0.8/29") && up.contains("not on-link"), "{up}");
    assert!(r.section("overlay").contains("stage 4 builds"));
    assert_nothing_left(&r);
}

/// Up/down cycles on a routed fabric leave nothing (the router included).
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn routed_cycles_leave_nothing() {
    require_root();
    let r = sandbox(&format!(
        r#"
for i in 1 2 3; do cnet up overlay --fabric routed -q; cnet down -q; done
{LEFTOVERS}"#
    ));
    r.ok();
    assert_nothing_left(&r);
}
