//! Conflicts and bad input are refused with one clear line, changing nothing.

mod common;
use common::*;

fn run_plain(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cnet_bin()).args(args).output().unwrap()
}

#[test]
fn bad_input_is_refused() {
    let o = run_plain(&["up", "7"]);
    assert_eq!(o.status.code(), Some(1), "a bad request is exit 1; 2 is for what the machine cannot do");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown stage '7'"));
    let o = run_plain(&["explain", "2", "--containers", "300"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("do not fit") && e.contains("--pod-cidr"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let o = run_plain(&["explain", "3", "--nodes", "40"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn not_root_exits_2_with_one_line() {
    require_root();
    let o = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(cnet_bin())
        .args(["up", "single-node"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("needs root"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn conflicts_change_nothing() {
    require_root();
    let r = sandbox(
        r#"
ip link add enp0s8 type veth peer name lan0
ip addr add 10.0.0.10/24 dev enp0s8
ip netns add con2
ip link add br0 type bridge
snapshot() { ip -br link | sort; ip netns list | sort; ip route; }
snapshot > $T/before
mark netns-conflict
cnet up 2 --host 2>&1 && echo "up succeeded"
ip netns del con2
mark link-conflict
cnet up 2 --host 2>&1 && echo "up succeeded"
ip netns add con2
snapshot > $T/after
mark diff
diff $T/before $T/after || true
ip link del br0; ip netns del con2
cnet up 2 -q
mark twice
cnet up 1 2>&1 && echo "up succeeded"
mark exec-bad
cnet exec node7 -- true 2>&1 || echo "exit=$?"
cnet exec node1/con9 -- true 2>&1 || echo "exit=$?"
cnet down -q
"#,
    );
    r.ok();
    let n = r.section("netns-conflict");
    assert!(n.contains("'con2' already exists") && !n.contains("up succeeded"), "{n}");
    let l = r.section("link-conflict");
    assert!(l.contains("br0 already exists (not cnet's)") && !l.contains("up succeeded"), "{l}");
    assert!(r.section("diff").trim().is_empty(), "a refused up changed something:\n{}", r.section("diff"));
    let t = r.section("twice");
    assert!(t.contains("already up") && !t.contains("up succeeded"), "{t}");
    let x = r.section("exec-bad");
    assert!(x.contains("no node 'node7'") && x.contains("no container 'con9'"), "{x}");
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn a_second_command_waits_for_the_first() {
    require_root();
    let r = sandbox(
        r#"
cnet up single-node -q --containers 300 --pod-cidr 172.16.0.0/22 &
i=0; until [ -e /run/cnet/lab.json ] || [ $i -ge 1000 ]; do i=$((i+1)); sleep 0.005; done   # the first holds the lock now
mark second
cnet up namespace -q 2>&1 || echo "exit=$?"
wait
mark status
cnet status | head -3
cnet down -q
"#,
    );
    r.ok();
    let second = r.section("second");
    assert!(
        second.contains("waiting for another cnet command")
            && second.contains("already up with stage single-node")
            && second.contains("exit=1"),
        "{second}"
    );
    assert!(r.section("status").contains("matches the plan"), "{}", r.section("status"));
}
