//! Host mode (`--host`) in a sandbox playing the talk's VM (common::VM): it has an
//! `enp0s8` with 10.0.0.10/24, and cnet builds straight on it.

mod common;
use common::*;

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn host_stage2_matches_the_talk() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
cnet up single-node --host > /dev/null
mark netns
ip netns list
mark links
ip -br link
mark test
cnet test --host --json
mark ping
ip netns exec con1 ping -c1 -W2 172.16.0.3
mark down
cnet down
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert!(r.section("netns").contains("con1") && r.section("netns").contains("con2"));
    let links = r.section("links");
    for l in ["br0", "veth10", "veth20"] {
        assert!(links.contains(l), "{l} missing:\n{links}");
    }
    assert!(Checks::parse(&r.section("test")).all_passed(12), "{}", r.stdout);
    assert_eq!(ping_ttls(&r.section("ping")), vec![64]);
    assert!(r.section("down").contains("removed"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn host_stage1() {
    require_root();
    let r = sandbox(&format!(
        r#"{VM}
cnet up 1 --host -q
mark ping
ip netns exec con ping -c1 -W2 10.0.0.10
ping -c1 -W2 172.16.0.1
mark test
cnet test --host --json
cnet down -q
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert_eq!(ping_ttls(&r.section("ping")), vec![64, 64]);
    assert!(Checks::parse(&r.section("test")).all_passed(4));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn explain_sh_script_builds_what_cnet_checks() {
    require_root();
    for stage in ["namespace", "single-node"] {
        let r = sandbox(&format!(
            r#"{VM}
cnet explain {stage} --format sh > $T/build.sh
sh $T/build.sh > /dev/null
mark test
cnet test --host {stage} --json
"#
        ));
        r.ok();
        let want = if stage == "namespace" { 4 } else { 12 };
        assert!(Checks::parse(&r.section("test")).all_passed(want), "{stage}: {}", r.stdout);
    }
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn failed_step_is_rolled_back() {
    require_root();
    // Inject a failure at each of several steps: `up` must fail, name the step, and undo.
    for at in [1, 4, 12, 19] {
        let r = sandbox(&format!(
            r#"{VM}
mark up
if CNET_FAIL_AT_STEP={at} cnet up 2 --host -q 2>&1; then echo "up succeeded"; fi
{}"#,
            vm_leftovers()
        ));
        r.ok();
        let up = r.section("up");
        assert!(up.contains(&format!("step {at} (")) && up.contains("undone"), "step {at}: {up}");
        assert!(!up.contains("up succeeded"));
        assert_eq!(up.lines().count(), 1, "one line: {up}");
        assert_nothing_left(&r);
    }
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn exit_code_says_whose_fault_a_failed_step_is() {
    require_root();
    // The same step failing with a kernel "not supported" (the machine: exit 2) or with an
    // ordinary error (exit 1), on a host and in the lab (through the node's runner).
    let r = sandbox(&format!(
        r#"{VM}
mark codes
c=0; CNET_FAIL_AT_STEP=4:95 cnet up 2 --host -q 2>/dev/null || c=$?; echo "host eopnotsupp $c"
c=0; CNET_FAIL_AT_STEP=4 cnet up 2 --host -q 2>/dev/null || c=$?; echo "host plain $c"
c=0; CNET_FAIL_AT_STEP=4:95 cnet up 2 -q 2>/dev/null || c=$?; echo "lab eopnotsupp $c"
c=0; CNET_FAIL_AT_STEP=4 cnet up 2 -q 2>/dev/null || c=$?; echo "lab plain $c"
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert_eq!(r.section("codes").trim(), "host eopnotsupp 2\nhost plain 1\nlab eopnotsupp 2\nlab plain 1");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn no_tun_support_is_the_machines_fault() {
    require_root();
    // A machine without /dev/net/tun (hidden under an empty tmpfs, in the sandbox's own
    // mount namespace): stage 4's udp backend fails at tun0, in one line, with exit 2, and
    // what was built before is removed.
    let r = sandbox(&format!(
        r#"{VM}
mount -t tmpfs none /dev/net
mark up
c=0; cnet up overlay --host -q 2>&1 || c=$?; echo "exit=$c"
umount /dev/net
{}"#,
        vm_leftovers()
    ));
    r.ok();
    let up = r.section("up");
    assert!(up.contains("this machine has no TUN support") && up.contains("modprobe tun"), "{up}");
    assert_eq!(up.lines().count(), 2, "one line, then the exit code: {up}");
    assert!(up.trim_end().ends_with("exit=2"), "{up}");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn killed_up_is_removed_by_down() {
    require_root();
    // `up --step` waits for Enter before each step: feed five, then kill it mid-way.
    let r = sandbox(&format!(
        r#"{VM}
mkfifo $T/keys
cnet up 2 --host --step < $T/keys > /dev/null &
pid=$!
exec 3> $T/keys
printf '\n\n\n\n\n' >&3
sleep 0.5
kill -9 $pid
wait $pid || true
mark before
ip -br link | cut -d' ' -f1
mark down
cnet down
exec 3>&-
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert!(r.section("before").contains("veth10"), "the killed up had built something: {}", r.stdout);
    assert!(r.section("down").contains("removed"), "{}", r.stdout);
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn up_straight_after_down_on_a_host() {
    require_root();
    // On a host the names are reused at once: the kernel must be done with the old links.
    let r = sandbox(&format!(
        r#"{VM}
i=0
while [ $i -lt 20 ]; do cnet up 2 --host -q; cnet down -q; i=$((i+1)); done
echo cycles=$i
{}"#,
        vm_leftovers()
    ));
    r.ok();
    assert!(r.stdout.contains("cycles=20"));
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn up_killed_at_any_moment_is_removed_by_down() {
    require_root();
    // Kill `up` of 300 containers at several moments (mid-batch included); `down` must
    // remove whatever it had made, and the next `up` must work.
    let r = sandbox(&format!(
        r#"{VM}
for delay in 0.01 0.03 0.06 0.1 0.2; do
  cnet up 2 --host -q --containers 300 --pod-cidr 172.16.0.0/22 &
  pid=$!
  sleep $delay
  kill -9 $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  cnet down -q
  left=$(ip -o link show | grep -cE ': veth[0-9]+|: br0' || true)
  echo "after kill at $delay: $left links, $(ls /run/netns | wc -l) namespaces"
done
mark again
cnet up 2 --host -q && echo "up works" && cnet down -q
{}"#,
        vm_leftovers()
    ));
    r.ok();
    for l in r.stdout.lines().filter(|l| l.starts_with("after kill")) {
        assert!(l.ends_with(": 0 links, 0 namespaces"), "{l}\n{}", r.stderr);
    }
    assert!(r.section("again").contains("up works"), "{}", r.stderr);
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn replaced_namespace_and_changed_sysctl_are_left_alone() {
    require_root();
    // After `up`, the user replaces con2 by a namespace of their own (with a process in it)
    // and sets rp_filter on 'all' to a value of their own: `down` must touch neither, yet
    // still put back what is still as cnet set it (ip_forward, enp0s8's rp_filter).
    let r = sandbox(&format!(
        r#"{VM}
sysctl -qw net.ipv4.conf.enp0s8.rp_filter=1   # not what cnet sets, so that its restore shows
mark before
sysctl -n net.ipv4.conf.enp0s8.rp_filter
cnet up overlay --backend vxlan --host --node 1 -q
ip netns del con2
ip netns add con2
ip netns exec con2 sleep 60 &
sleeper=$!
sysctl -qw net.ipv4.ip_forward=0
sysctl -qw net.ipv4.ip_forward=1    # (cnet set 1: same value, so it is restored)
sysctl -qw net.ipv4.conf.all.rp_filter=2
cnet down -q
mark after
ip netns list
kill -0 $sleeper && echo "their process lives"
sysctl -n net.ipv4.ip_forward
mark rp
sysctl -n net.ipv4.conf.all.rp_filter net.ipv4.conf.enp0s8.rp_filter
kill $sleeper; wait $sleeper 2>/dev/null || true; ip netns del con2
{}"#,
        vm_leftovers()
    ));
    r.ok();
    let after = r.section("after");
    assert!(after.contains("con2") && after.contains("their process lives"), "{after}");
    assert!(after.trim_end().ends_with('0'), "ip_forward back to 0 (cnet's 1 was still there): {after}");
    let rp: Vec<String> = r.section("rp").lines().map(str::to_string).collect();
    assert_eq!(rp[0], "2", "all.rp_filter: the user's 2 is left as it is");
    assert_eq!(rp[1], r.section("before").trim(), "enp0s8's rp_filter back to what it was");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn ctrl_c_during_up_removes_what_it_built() {
    require_root();
    // Ctrl-C as a terminal sends it — SIGINT to the whole process group, node builders
    // included — in the middle of a 600-container build, on a host and in the lab: `up`
    // stops, removes what it had made, says so and exits 130, with no `down` needed.
    let r = sandbox(&format!(
        r#"{VM}{INTERRUPT_UP}
up_started() {{ [ -e /run/cnet/node.jsonl ] || [ -e /run/cnet/lab/node1/net ]; }}
SETTLE=0.1
for mode in --host ""; do
  mark "interrupted$mode"
  interrupt_up 2 $mode -q --containers 600 --pod-cidr 172.16.0.0/22
  cnet status
done
{}"#,
        vm_leftovers()
    ));
    r.ok();
    for mode in ["interrupted--host", "interrupted"] {
        let s = r.section(mode);
        assert!(s.contains("interrupted: what was built so far has been removed") && s.contains("exit=130"), "{mode}: {s}");
        assert!(s.contains("nothing is up"), "{mode}: {s}");
    }
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn ctrl_c_while_up_waits_for_the_tunnel() {
    require_root();
    // Stage 4 on the VM and in the lab, the tunnel slow to get ready (test hook): Ctrl-C
    // while `up` waits for it. `up` must stop at once (not when the tunnel is ready 3 s
    // later), stop the tunnel it started, remove everything and exit 130.
    let r = sandbox(&format!(
        r#"{VM}{INTERRUPT_UP}
up_started() {{ pgrep -f '[t]unnel --dev tun0 --local' > /dev/null; }}
SETTLE=0.2
export CNET_TUNNEL_READY_DELAY_MS=3000
for mode in --host ""; do
  mark "interrupted$mode"
  interrupt_up overlay $mode -q
  pgrep -fa '[t]unnel --dev tun0 --local' || echo "no tunnel running"
  cnet status
done
{}"#,
        vm_leftovers()
    ));
    r.ok();
    for mode in ["interrupted--host", "interrupted"] {
        let s = r.section(mode);
        assert!(
            s.contains("interrupted: what was built so far has been removed") && s.contains("exit=130"),
            "{mode}: {s}\n{}",
            r.stderr
        );
        let ms: u64 = s.split("stopped in ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).unwrap();
        assert!(ms < 2000, "{mode}: stopped {ms} ms after Ctrl-C: it waited for the tunnel to get ready\n{s}");
        assert!(s.contains("no tunnel running") && s.contains("nothing is up"), "{mode}: {s}");
    }
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn quitting_at_a_prompt_leaves_what_the_user_made_alone() {
    require_root();
    // `up --step`: step 1 runs, then at the prompt for step 2 (`ip netns add con2`) the user
    // types that command by hand and answers q. Step 2 never ran, so con2 is not cnet's:
    // the undo removes con1 only.
    let r = sandbox(&format!(
        r#"{VM}
mkfifo $T/keys
cnet up 2 --host --step < $T/keys > /dev/null 2> $T/err & pid=$!
exec 3> $T/keys
printf '\n' >&3
i=0; until [ -e /run/netns/con1 ] || [ $i -ge 500 ]; do i=$((i+1)); sleep 0.01; done
ip netns add con2
echo q >&3
code=0; wait $pid || code=$?
exec 3>&-
mark result
cat $T/err
echo "exit=$code"
mark netns
ls /run/netns
ip netns del con2
{}"#,
        vm_leftovers()
    ));
    r.ok();
    let res = r.section("result");
    // A deliberate stop is not a failure: its own words and exit code 3.
    assert!(res.contains("stopped at your request before step 2") && res.contains("exit=3"), "{res}");
    assert_eq!(r.section("netns").trim(), "con2", "the user's con2 stays, cnet's con1 goes");
    assert_nothing_left(&r);
}

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn ctrl_c_at_a_step_prompt() {
    require_root();
    // `up --step` waiting for Enter: Ctrl-C must end it at once and undo the steps run.
    let r = sandbox(&format!(
        r#"{VM}
mkfifo $T/keys
setsid cnet up 2 --host --step < $T/keys > /dev/null 2> $T/err & pid=$!
exec 3> $T/keys
printf '\n\n\n' >&3
i=0; until [ "$(ls /run/netns | wc -l)" -ge 2 ] || [ $i -ge 400 ]; do i=$((i+1)); sleep 0.01; done
kill -INT -$pid
i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 500 ]; do i=$((i+1)); sleep 0.01; done
kill -0 $pid 2>/dev/null && {{ echo "still running after Ctrl-C"; kill -9 $pid; }}
code=0; wait $pid || code=$?
mark result
cat $T/err
echo "exit=$code"
exec 3>&-
{}"#,
        vm_leftovers()
    ));
    r.ok();
    let res = r.section("result");
    assert!(res.contains("interrupted: what was built so far has been removed") && res.contains("exit=130"), "{res}");
    assert_nothing_left(&r);
}
