//! Stages 3 and 4: two nodes in the lab, and on two sandboxes playing the talk's two VMs.

mod common;
use common::*;

/// The talk's 24 checks on each node, with the system `ping` inside the nodes and their
/// containers, and cnet's own `cnet test`; then `down` leaves nothing.
fn lab_stage(args: &str, overlay_dev: Option<&str>) {
    let r = sandbox(&format!(
        r#"
cnet up {args} > /dev/null
mark test
cnet test --json
mark con-con
cnet exec node1 -- ip netns exec con1 ping -c1 -W2 172.16.1.2
mark node-con
cnet exec node1 -- ping -c1 -W2 172.16.1.3
mark con-node
cnet exec node2/con2 -- ping -c1 -W2 10.0.0.10
mark node-node
cnet exec 2 -- ping -c1 -W2 10.0.0.10
mark routes
cnet exec node1 -- ip route
mark status
cnet status --json
mark down
cnet down
{LEFTOVERS}"#
    ));
    r.ok();
    let t = Checks::parse(&r.section("test"));
    assert_eq!(t.nodes, vec![(1, 24, 24), (2, 24, 24)], "{:?}", t.failed);
    assert_eq!(ping_ttls(&r.section("con-con")), vec![62], "two routers: both nodes");
    assert_eq!(ping_ttls(&r.section("node-con")), vec![63]);
    assert_eq!(ping_ttls(&r.section("con-node")), vec![63]);
    assert_eq!(ping_ttls(&r.section("node-node")), vec![64]);
    let routes = r.section("routes");
    match overlay_dev {
        None => assert!(routes.contains("172.16.1.0/24 via 10.0.0.20 dev enp0s8"), "{routes}"),
        Some(dev) => {
            assert!(routes.contains(&format!("172.16.0.0/16 dev {dev}")), "{routes}");
            assert!(!routes.contains("via 10.0.0.20"), "no static route in stage 4: {routes}");
        }
    }
    assert!(status_matches(&r.section("status")), "{}", r.section("status"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage3_multi_node_lab() {
    require_root();
    lab_stage("multi-node", None);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage4_vxlan_lab() {
    require_root();
    lab_stage("overlay --backend vxlan", Some("vxlan0"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage4_udp_tunnel_lab() {
    require_root();
    lab_stage("overlay", Some("tun0"));
}

/// Two sandboxes playing the talk's VMs, joined by a veth (their enp0s8), each running
/// `cnet up ... --host --node i` in its own mount and UTS namespace.
fn two_vms(args: &str) -> Run {
    two_vms_with(args, false)
}

/// The same, built by the script `cnet explain ARGS --format sh` prints (and removed by its
/// `sh-down`), then checked by `cnet test --host`: the script must be true.
fn two_vms_by_script(args: &str) -> Run {
    two_vms_with(args, true)
}

fn two_vms_with(args: &str, script: bool) -> Run {
    let vm = r#"
vm() {  # vm INDEX OTHER: one VM's whole session
  ip netns exec vm$1 unshare --mount --uts --propagation private sh -euc '
    trap "touch $T/ready.'$1' $T/tested.'$1'" EXIT  # a VM that dies early must not leave the other waiting
    mount -t tmpfs vm /run/netns; mount -t tmpfs vm /run/cnet; hostname vm'$1'
    if [ -n "$SCRIPT" ]; then
      cnet explain $ARGS --format sh > $T/build.'$1'.sh; sh $T/build.'$1'.sh '$1' > $T/up.'$1' 2>&1 || { echo failed > $T/up.'$1'.err; }
    else
      cnet up '"$ARGS"' --host --node '$1' > $T/up.'$1' 2>&1 || { echo failed > $T/up.'$1'.err; }
    fi
    touch $T/ready.'$1'
    i=0; while [ ! -e $T/ready.'$2' ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "vm'$2' never got ready" >&2; exit 1; }; sleep 0.05; done
    if [ -n "$SCRIPT" ]; then cnet test --host $ARGS --node '$1' --json > $T/test.'$1' 2>$T/test.'$1'.err || true; else cnet test --host --json > $T/test.'$1' 2>$T/test.'$1'.err || true; fi
    ip netns exec con1 ping -c1 -W2 172.16.$(( '$2' - 1 )).2 > $T/ping.'$1' 2>&1 || true
    touch $T/tested.'$1'
    i=0; while [ ! -e $T/tested.'$2' ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "vm'$2' never finished its tests" >&2; exit 1; }; sleep 0.05; done
    if [ -n "$SCRIPT" ]; then
      cnet explain $ARGS --format sh-down | sh -s '$1' > $T/down.'$1' 2>&1 && echo "removed by the script" >> $T/down.'$1'
    else
      cnet down > $T/down.'$1' 2>&1
    fi
    { ip -o link show | awk -F": " "{print \$2}" | cut -d@ -f1 | grep -vxE "lo|enp0s8" || true; ls /run/netns; ls -A /run/cnet;
      for p in /proc/[0-9]*; do [ "$(readlink $p/ns/net)" = "$(readlink /proc/self/ns/net)" ] || continue; tr "\0" " " < $p/cmdline 2>/dev/null | grep -E "^([^ ]*/)?(cnet|exe) tunnel " || true; done; } > $T/left.'$1'
  '
}
ip netns add vm1; ip netns add vm2
ip link add enp0s8 netns vm1 type veth peer name enp0s8 netns vm2
ip -n vm1 addr add 10.0.0.10/24 dev enp0s8; ip -n vm2 addr add 10.0.0.20/24 dev enp0s8
ip -n vm1 link set enp0s8 up; ip -n vm2 link set enp0s8 up
ip -n vm1 link set lo up; ip -n vm2 link set lo up
vm 1 2 & vm 2 1 & wait
for i in 1 2; do mark up.$i; cat $T/up.$i; mark test.$i; cat $T/test.$i; mark ping.$i; cat $T/ping.$i; mark down.$i; cat $T/down.$i; mark left.$i; cat $T/left.$i; done
mark end
"#;
    let script = if script { "1" } else { "" };
    sandbox(&format!("export ARGS='{args}' SCRIPT='{script}'\n{vm}"))
}

fn assert_vms(r: &Run) {
    r.ok();
    for i in ["1", "2"] {
        let t = r.section(&format!("test.{i}"));
        assert!(Checks::parse(&t).all_passed(24), "vm{i}:\n{t}\nup:\n{}", r.section(&format!("up.{i}")));
        assert_eq!(ping_ttls(&r.section(&format!("ping.{i}"))), vec![62], "vm{i}");
        assert!(r.section(&format!("down.{i}")).contains("removed"));
        assert!(r.section(&format!("left.{i}")).trim().is_empty(), "vm{i} left: {}", r.section(&format!("left.{i}")));
    }
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage3_on_two_host_vms() {
    require_root();
    assert_vms(&two_vms("multi-node"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage4_vxlan_on_two_host_vms() {
    require_root();
    assert_vms(&two_vms("overlay --backend vxlan"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage4_udp_on_two_host_vms() {
    require_root();
    assert_vms(&two_vms("overlay"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn explain_sh_builds_stages_3_and_4_on_two_vms() {
    require_root();
    assert_vms(&two_vms_by_script("multi-node"));
    assert_vms(&two_vms_by_script("overlay --backend vxlan"));
    // `ip tuntap add dev tun0 mode tun`, then `cnet tunnel ... &` attaching to it.
    assert_vms(&two_vms_by_script("overlay"));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn udp_gso_is_refused_on_an_ethernet_underlay() {
    require_root();
    // Real machines' enp0s8 carries 1500 bytes: the 64 KB datagrams could not cross. Both
    // `cnet up` and the script `cnet explain` prints refuse before building anything.
    for (r, says) in [
        (two_vms("overlay --backend udp-gso"), "the udp-gso backend sends 64 KB datagrams, but the underlay enp0s8 has MTU 1500"),
        (two_vms_by_script("overlay --backend udp-gso"), "the udp-gso backend needs enp0s8's MTU at 65535"),
    ] {
        r.ok();
        for i in ["1", "2"] {
            let up = r.section(&format!("up.{i}"));
            assert!(up.contains(says), "vm{i}: {up}");
            assert_eq!(up.lines().count(), 1, "one line: {up}");
            assert!(r.section(&format!("left.{i}")).trim().is_empty(), "vm{i} left: {}", r.section(&format!("left.{i}")));
        }
    }
}
