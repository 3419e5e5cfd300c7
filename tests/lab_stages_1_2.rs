//! Stages 1 and 2 in the lab: built, checked with cnet's own ICMP and with the system
//! `ping` inside the node and its containers, then removed without a trace.

mod common;
use common::*;

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage1_namespace_lab() {
    require_root();
    let r = sandbox(&format!(
        r#"
mark up
cnet up namespace
mark test
cnet test --json
mark hostname
cnet exec node1 -- hostname
mark netns
cnet exec 1-network-namespace -- ip netns list
mark ping-node
cnet exec node1 -- ip netns exec con ping -c1 -W2 10.0.0.10
mark ping-con
cnet exec node1 -- ping -c1 -W2 172.16.0.1
mark route
cnet exec node1 -- ip route
mark down
cnet down
{LEFTOVERS}"#
    ));
    r.ok();
    // `up` prints each step as the talk's script did: the explanation, then the command.
    let up = r.section("up");
    for want in [
        "== node1 (1-network-namespace): 10.0.0.10/24 ==",
        "[1/8] Create the network namespace 'con'",
        "$ ip netns add con",
        "$ ip link add veth1 type veth peer name veth2 netns con",
        "$ ip -n con route add default via 172.16.0.1 dev veth2",
        "Try this next:",
    ] {
        assert!(up.contains(want), "missing {want:?} in:\n{up}");
    }
    assert!(Checks::parse(&r.section("test")).all_passed(4), "{}", r.stdout);
    assert_eq!(r.section("hostname").trim(), "1-network-namespace");
    assert!(r.section("netns").starts_with("con"), "{}", r.section("netns"));
    assert_eq!(ping_ttls(&r.section("ping-node")), vec![64]);
    assert_eq!(ping_ttls(&r.section("ping-con")), vec![64]);
    assert!(r.section("route").contains("172.16.0.1 dev veth1 scope link"), "{}", r.section("route"));
    assert!(r.section("down").contains("lab removed"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage1_http_demo_and_down_stops_the_server() {
    require_root();
    // The talk's demo: a web server inside `con`, fetched from the node.
    let r = sandbox(&format!(
        r#"
cnet up 1 -q
cnet exec node1 -- sh -c 'ip netns exec con python3 -m http.server 8000 >/dev/null 2>&1 & echo $! > $T/server.pid'
i=0; until cnet exec node1 -- python3 -c 'import urllib.request; print(urllib.request.urlopen("http://172.16.0.1:8000/").status)' 2>/dev/null; do i=$((i+1)); [ $i -lt 50 ] || exit 1; sleep 0.1; done
# By its pid (a pattern would match this script's own text): running, or exited (a zombie
# waits for this shell, the sandbox's init, to reap it).
state() {{ awk '{{print $3}}' /proc/$(cat $T/server.pid)/stat 2>/dev/null || echo gone; }}
mark running
case $(state) in Z|gone) echo "server not running" ;; *) echo "server running" ;; esac
cnet down -q
mark server
case $(state) in Z|gone) echo "server stopped" ;; *) echo "server still running" ;; esac
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(r.stdout.starts_with("200"), "{}", r.stdout);
    // The match is shown to find the server before `down`, so its absence after means something.
    assert_eq!(r.section("running").trim(), "server running");
    assert_eq!(r.section("server").trim(), "server stopped", "down stops what runs in the lab's containers");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage2_single_node_lab() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up single-node > /dev/null
mark test
cnet test --json
mark json
cnet test --json
mark netns
cnet exec node1 -- ip netns list
mark routes
cnet exec node1 -- ip route
mark con1-con2
cnet exec node1/con1 -- ping -c1 -W2 172.16.0.3
mark con2-node
cnet exec 2-single-node -- ip netns exec con2 ping -c1 -W2 10.0.0.10
mark node-con1
cnet exec node1 -- ping -c1 -W2 172.16.0.2
mark v6-con
cnet exec node1/con1 -- sh -c 'ip -d link show veth11; ip addr show veth11'
mark v6-port
cnet exec node1 -- sh -c 'ip -d link show veth10; ip addr show veth10'
mark v6-bridge
cnet exec node1 -- ip addr show br0
mark status
cnet status
mark down
cnet down
mark down-again
cnet down
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(Checks::parse(&r.section("test")).all_passed(12), "{}", r.stdout);
    let json: serde_json::Value = serde_json::from_str(&r.section("json")).unwrap();
    assert_eq!(json[0]["results"].as_array().unwrap().len(), 12);
    let netns = r.section("netns");
    assert!(netns.contains("con1") && netns.contains("con2"), "{netns}");
    let routes = r.section("routes");
    assert!(routes.contains("172.16.0.0/24 dev br0 proto kernel scope link src 172.16.0.1"), "{routes}");
    assert!(routes.contains("10.0.0.0/24 dev enp0s8"), "{routes}");
    assert_eq!(ping_ttls(&r.section("con1-con2")), vec![64], "same L2: nothing routed");
    assert_eq!(ping_ttls(&r.section("con2-node")), vec![64]);
    assert_eq!(ping_ttls(&r.section("node-con1")), vec![64]);
    // The veth ends carry no IPv6 link-local address (no DAD/MLD multicast for br0 to flood
    // to every port); the bridge itself keeps the kernel's default.
    for port in ["v6-con", "v6-port"] {
        let out = r.section(port);
        assert!(out.contains("addrgenmode none") && !out.contains("inet6"), "{port}: {out}");
    }
    assert!(r.section("v6-bridge").contains("inet6 fe80::"), "{}", r.section("v6-bridge"));
    assert!(r.section("status").contains("matches the plan (19/19 steps verified)"), "{}", r.section("status"));
    assert!(r.section("down-again").contains("nothing is up"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn twenty_up_down_cycles() {
    require_root();
    let r = sandbox(&format!(
        r#"
i=0
while [ $i -lt 20 ]; do cnet up 2 -q; cnet down -q; i=$((i+1)); done
echo cycles=$i
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(r.stdout.contains("cycles=20"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn step_mode_waits_for_enter_in_the_lab() {
    require_root();
    // `--step`: each step shown, then nothing happens until Enter. While it waits, `status`
    // works from a second terminal, `test` says the lab is still being built, and `s` opens a
    // shell inside the node, at that point of the build.
    let r = sandbox(&format!(
        r#"
mkfifo $T/keys
SHELL=/bin/bash cnet up namespace --step < $T/keys > $T/out 2>&1 &
exec 3> $T/keys
printf '\n\n' >&3
wait_for 100 sh -c "[ \$(grep -o 'Enter: run it' $T/out | wc -l) -ge 3 ]"
mark after-two
grep -o 'Enter: run it' $T/out | wc -l
grep -c '"complete": false' /run/cnet/lab.json
mark status-meanwhile
cnet status --json | grep -c '"verified": 2'
mark test-meanwhile
cnet test 2>&1 || true
printf 's\nhostname > $T/shell; ip -br link >> $T/shell; exit\n' >&3
wait_for 100 grep -qs veth1 $T/shell
mark shell
cat $T/shell
printf '\n\n\n\n\n\n' >&3
exec 3>&-
wait
mark done
cnet status --json
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let after_two = r.section("after-two");
    assert_eq!(
        after_two.split_whitespace().collect::<Vec<_>>(),
        ["3", "1"],
        "two Enters run two steps and show the third: {after_two}"
    );
    assert_eq!(r.section("status-meanwhile").trim(), "1", "status reads the half-built node");
    assert!(r.section("test-meanwhile").contains("still being built"), "{}", r.section("test-meanwhile"));
    let shell = r.section("shell");
    // Inside the node, after step 2: the veth pair exists, its node end is not up yet.
    assert!(shell.starts_with("1-network-namespace\n") && shell.contains("veth1") && !shell.contains("veth1@if2 UP"), "{shell}");
    assert!(status_matches(&r.section("done")), "{}", r.section("done"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn up_with_its_output_closed_still_builds_everything() {
    require_root();
    // Nobody reads `up`'s output (stdout, then stderr too with debug logging on): every
    // write fails, and `up` must neither die half-way nor leave a mess.
    let r = sandbox(&format!(
        r#"
{{ cnet up multi-node; echo $? > $T/code1; }} | (exec 0<&-)
mark status1
cat $T/code1
cnet status
cnet down -q
{{ CNET_LOG=debug cnet up multi-node 2>&1; echo $? > $T/code2; }} | (exec 0<&-)
mark status2
cat $T/code2
cnet status
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    for s in ["status1", "status2"] {
        let st = r.section(s);
        assert!(st.starts_with("0\n"), "{s}: exit code: {st}");
        assert_eq!(st.matches("matches the plan").count(), 2, "{s}: {st}");
    }
    assert_nothing_left(&r);
}
