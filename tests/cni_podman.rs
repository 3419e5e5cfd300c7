//! cnet under a real container runtime: podman (Debian's, with its CNI backend) on two
//! sandbox "VMs" joined like the talk's Vagrant hosts, each with stage 4's node part built
//! by `cnet up overlay --host --node N --containers 0` and cnet as podman's CNI plugin.
//! Podman's state lives on each VM's own tmpfs (scripts/lib/podman.sh), never the machine's.

mod common;
use common::*;

/// Two VMs, each a holder process with network, mount and UTS namespaces of its own, wired
/// by a veth pair (each end `enp0s8`); `in_vm N SCRIPT` runs SCRIPT in VM N with the podman
/// helpers, podman's environment (once set up) and cnet on PATH.
const TWO_VMS: &str = r#"
REPO=$(pwd)
unshare --net --mount --uts --propagation private sleep 1000000 & H1=$!
unshare --net --mount --uts --propagation private sleep 1000000 & H2=$!
me=$(readlink /proc/self/ns/net)
wait_for 100 sh -c "[ \"\$(readlink /proc/$H1/ns/net)\" != '$me' ] && [ \"\$(readlink /proc/$H2/ns/net)\" != '$me' ]"
in_vm() {
  n=$1; shift; h=$H1; [ "$n" = 2 ] && h=$H2
  nsenter -t "$h" -n -m -u -- env PATH="$PATH" CNET="$CNET" sh -euc ". $REPO/scripts/lib/podman.sh
    wait_for() { n=\$1; shift; i=0; until \"\$@\"; do i=\$((i+1)); [ \$i -lt \$n ] || { echo \"timed out waiting for: \$*\" >&2; return 1; }; sleep 0.05; done; }
    [ -d /var/lib/cnet-podman ] && podman_env /var/lib/cnet-podman
    $*"
}
ip link add enp0s8 netns "$H1" type veth peer name enp0s8 netns "$H2"
for n in 1 2; do
  in_vm $n "podman_vm_mounts; hostname vm$n; ip link set lo up; ip addr add 10.0.0.${n}0/24 dev enp0s8; ip link set enp0s8 up"
  in_vm $n "podman_setup /var/lib/cnet-podman \$CNET; import_busybox; write_conflist cnet '{\"type\": \"cnet\"}'"
done
# What each VM holds, beyond its own lo and enp0s8: must be nothing after rm and down.
vm_left() {
  for n in 1 2; do
    in_vm $n "ip -o link show | awk -F': ' '{print \$2}' | cut -d@ -f1 | grep -vxE 'lo|enp0s8' | sed 's/^/link /' || true
      ls -A /run/cnet | sed 's/^/run-cnet /'; ls /run/netns | sed 's/^/netns /'
      pm ps -a --format 'container {{.Names}}'
      for p in /proc/[0-9]*; do case \"\$(readlink \$p/exe 2>/dev/null)\" in */cnet) echo \"process \$(tr '\\0' ' ' < \$p/cmdline)\";; esac; done; true"
  done
}
"#;

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn podman_containers_on_two_vms_meet_across_the_overlay() {
    require_root();
    let r = sandbox(&format!(
        r#"{TWO_VMS}
for n in 1 2; do in_vm $n "cnet up overlay --host --node $n --containers 0 -q"; done
mark networks
in_vm 1 "pm network ls --format '{{{{.Name}}}} {{{{.Driver}}}}'"
for n in 1 2; do in_vm $n "pm run -d --name c-vm$n --network cnet --cap-add NET_RAW \$IMAGE sleep 1000 > /dev/null"; done
ip1=$(in_vm 1 "pm inspect c-vm1 --format '{{{{.NetworkSettings.Networks.cnet.IPAddress}}}}'")
ip2=$(in_vm 2 "pm inspect c-vm2 --format '{{{{.NetworkSettings.Networks.cnet.IPAddress}}}}'")
mark ips
echo "$ip1 $ip2"
mark ping
in_vm 1 "pm exec c-vm1 ping -c 2 -W 2 $ip2"
in_vm 2 "pm exec c-vm2 ping -c 1 -W 2 $ip1"
mark tcp
in_vm 2 "pm exec c-vm2 sh -c 'mkdir -p /www && echo hello from vm2 > /www/index.html && httpd -p 8000 -h /www'"
in_vm 1 "pm exec c-vm1 wget -q -O - http://$ip2:8000/"
mark status
in_vm 1 "cnet status --host"
mark test
in_vm 1 "cnet test --host --json"
mark rm
for n in 1 2; do in_vm $n "pm rm -f -t 0 c-vm$n"; done
for n in 1 2; do in_vm $n "wait_for 100 sh -c '! ip -o link show | grep -q vethac10'"; done
mark after-rm
for n in 1 2; do in_vm $n "ls /run/netns; ls /run/cnet/cni/br0 | grep '^172' || true"; done
mark down
for n in 1 2; do in_vm $n "cnet down"; done
mark again
for n in 1 2; do in_vm $n "cnet up overlay --host --node $n --containers 0 -q"; done
in_vm 1 "cnet test --host --json"
for n in 1 2; do in_vm $n "cnet down -q"; done
mark left
vm_left
mark end
kill $H1 $H2
"#
    ));
    r.ok();
    assert!(r.section("networks").contains("cnet cnet"), "podman lists the cnet network: {}", r.section("networks"));
    assert_eq!(r.section("ips").trim(), "172.16.0.2 172.16.1.2", "each VM's pod subnet, from cnet's record");
    // Container to container across the overlay: two routers, node 1 then node 2.
    assert_eq!(ping_ttls(&r.section("ping")), vec![62, 62, 62]);
    assert_eq!(r.section("tcp").trim(), "hello from vm2");
    let status = r.section("status");
    assert!(status.contains("matches the plan") && status.contains("peer c-vm1:eth0"), "{status}");
    assert!(status.contains("c-vm1") && status.contains("172.16.0.2/24") && status.contains(" ok"), "{status}");
    let checks = Checks::parse(&r.section("test"));
    assert!(checks.failed.is_empty() && checks.nodes[0].2 >= 10, "{:?}\n{}", checks.failed, r.section("test"));
    assert!(r.section("test").contains("\"from\": \"c-vm1\""), "the podman container is checked too");
    assert_eq!(r.section("rm").trim(), "c-vm1\nc-vm2");
    assert!(r.section("after-rm").trim().is_empty(), "podman rm released everything: {}", r.section("after-rm"));
    assert!(Checks::parse(&r.section("again")).all_passed(4), "the node part alone, up again: {}", r.section("again"));
    assert!(r.section("left").trim().is_empty(), "left in the VMs:\n{}\n--- stderr\n{}", r.section("left"), r.stderr);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn down_under_running_podman_containers() {
    require_root();
    // The node part goes while a podman container runs: cnet's part goes, the container
    // stays the runtime's, and `podman rm` still works after.
    let r = sandbox(&format!(
        r#"{TWO_VMS}
in_vm 1 "cnet up single-node --host --containers 0 -q"
in_vm 1 "pm run -d --name web --network cnet \$IMAGE sleep 1000 > /dev/null"
mark down
in_vm 1 "cnet down" 2>&1
mark after
in_vm 1 "pm ps --format '{{{{.Names}}}} {{{{.Status}}}}' | cut -c1-6"
in_vm 1 "pm exec web ip -o link show | grep -c eth0 || true"
mark rm
in_vm 1 "pm rm -f -t 0 web"
mark left
vm_left
mark end
kill $H1 $H2
"#
    ));
    r.ok();
    assert!(r.section("down").contains("1 container(s) a runtime attached"), "{}", r.section("down"));
    assert_eq!(r.section("after").trim(), "web Up\n0", "the container runs on, without cnet's interface");
    assert_eq!(r.section("rm").trim(), "web");
    assert!(r.section("left").trim().is_empty(), "left in the VMs:\n{}", r.section("left"));
}
