//! Scale options: many containers on one node, more than two nodes.

mod common;
use common::*;

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn two_hundred_containers_pass_and_leave_nothing() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up single-node --containers 200 --pod-cidr 172.16.0.0/23 -q
mark test
cnet test --json
mark names
cnet exec node1 -- ip netns list | wc -l
cnet exec node1 -- ip -br addr show dev br0
cnet exec node1/con200 -- ip -br addr show dev veth2001
mark ping
cnet exec node1/con200 -- ping -c1 -W2 172.16.0.2
mark down
cnet down
{LEFTOVERS}"#
    ));
    r.ok();
    let t = r.section("test");
    assert!(t.contains("\"plan\": \"bounded\"") && Checks::parse(&t).all_passed(402), "{t}");
    let names = r.section("names");
    assert!(names.starts_with("200\n"), "{names}");
    assert!(names.contains("172.16.0.1/23") && names.contains("172.16.0.201/23"), "{names}");
    assert_eq!(ping_ttls(&r.section("ping")), vec![64]);
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn three_node_static_routes() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up multi-node --nodes 3 -q
mark test
cnet test --json
mark routes
cnet exec node3 -- ip route
mark ping
cnet exec node3/con1 -- ping -c1 -W2 172.16.0.3
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(Checks::parse(&r.section("test")).all_passed(108), "{}", r.section("test"));
    let routes = r.section("routes");
    assert!(
        routes.contains("172.16.0.0/24 via 10.0.0.10 dev enp0s8") && routes.contains("172.16.1.0/24 via 10.0.0.20 dev enp0s8"),
        "{routes}"
    );
    assert_eq!(ping_ttls(&r.section("ping")), vec![62]);
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn three_node_overlay() {
    require_root();
    // One tun0 and one socket per node; each packet goes to the node owning its subnet,
    // and only there: node 2 sees nothing of node 3's pings to node 1.
    let r = sandbox(&format!(
        r#"
cnet up overlay --nodes 3 -q
mark test
cnet test --json
received() {{ cnet exec node$1 -- cnet status --host --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["tunnel"]["udp_to_tun"]["packets"])'; }}
settled() {{ a=$(received $1); sleep 0.3; b=$(received $1); i=0; while [ "$a" != "$b" ] && [ $i -lt 100 ]; do i=$((i+1)); a=$b; sleep 0.3; b=$(received $1); done; echo $b; }}
n1=$(settled 1); n2=$(settled 2)
mark ping
cnet exec node3/con1 -- ping -c3 -i 0.2 -W2 172.16.0.3
mark counts
echo $(( $(settled 1) - n1 )) $(( $(settled 2) - n2 ))
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(Checks::parse(&r.section("test")).all_passed(108), "{}", r.section("test"));
    assert_eq!(ping_ttls(&r.section("ping")), vec![62, 62, 62]);
    let counts: Vec<u64> = r.section("counts").split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(counts[0] >= 3, "node 1 received the echo requests: {counts:?}");
    assert_eq!(counts[1], 0, "node 2 received nothing: {counts:?}");
    assert_nothing_left(&r);
}
