//! The learner's experience: what the README tells a learner to do works as written, the
//! output reads on an 80-column terminal, and a fault put in on purpose is found.

mod common;
use common::*;

fn run_plain(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cnet_bin()).args(args).output().unwrap()
}

/// Every command and every option has a help line.
#[test]
fn every_command_and_option_has_help() {
    let top = String::from_utf8(run_plain(&["--help"]).stdout).unwrap();
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 12 && commands.contains(&"break"), "{top}");
    for c in commands {
        let help = String::from_utf8(run_plain(&[c, "--help"]).stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            // An option or argument line (indented 2 to 6; possible values are deeper): its
            // help is on the same line or the next one.
            let indent = l.len() - t.len();
            if (t.starts_with('-') || t.starts_with('<')) && (2..=6).contains(&indent) {
                let same = t.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
                let next = lines.get(i + 1).is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
                assert!(same || next, "`cnet {c}`: no help for {t}\n{help}");
            }
        }
    }
}

/// `up overlay` fits an 80-column terminal, says each repeated note once, and says what
/// to try next once, at the end.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn up_reads_on_80_columns() {
    require_root();
    let r = sandbox(&format!(
        r#"
mark up
COLUMNS=80 cnet up overlay
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let up = r.section("up");
    let wide: Vec<&str> = up.lines().filter(|l| l.chars().count() > 80).collect();
    assert!(wide.is_empty(), "lines over 80 columns: {wide:#?}");
    // Once per node plan: the first veth end explains addrgenmode, the others point at it.
    assert_eq!(up.matches("DAD and MLD").count(), 2, "{up}");
    assert_eq!(up.matches("Try this next").count(), 1, "{up}");
    assert_nothing_left(&r);
}

/// The README's stage-1 demo: the server in `con` answers at once (the node resolves its
/// own name from its /etc/hosts; the machine's DNS server is out of reach).
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn stage1_http_demo_answers_at_once() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up namespace -q
mark demo
cnet exec node1 -- sh -c 'ip netns exec con python3 -m http.server 8000 > /dev/null 2>&1 & s=$(date +%s%N); curl --retry 50 --retry-connrefused --retry-delay 0 -s -o /dev/null -w "%{{http_code}}\n" 172.16.0.1:8000; e=$(date +%s%N); echo "ms $(( (e - s) / 1000000 ))"'
mark hosts
cnet exec node1 -- getent hosts 1-network-namespace
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let demo = r.section("demo");
    assert!(demo.starts_with("200\n"), "{demo}");
    let ms: u64 = demo.split("ms ").nth(1).unwrap().trim().parse().unwrap();
    // Python's start-up is a few hundred ms; a DNS timeout would be seconds.
    assert!(ms < 3000, "the server took {ms} ms to answer: {demo}");
    assert!(r.section("hosts").contains("1-network-namespace"));
    assert_nothing_left(&r);
}

/// `cnet break no-forwarding node2` makes `cnet test` fail, status says what was broken,
/// and `down` leaves nothing.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn a_broken_node_is_found_and_removed() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up multi-node -q
mark break
cnet break no-forwarding node2
mark forwarding
cnet exec node2 -- cat /proc/sys/net/ipv4/ip_forward
mark test
rc=0; cnet test > $T/test.out || rc=$?
cat $T/test.out; echo "exit=$rc"
mark status
cnet status | head -3
mark list
cnet break --list
mark stage2
cnet down -q
cnet up single-node -q
cnet break no-forwarding node1 2>&1 || echo "exit=$?"
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    assert!(r.section("break").contains("sysctl -w net.ipv4.ip_forward=0"), "{}", r.section("break"));
    assert_eq!(r.section("forwarding").trim(), "0");
    let test = r.section("test");
    assert!(test.contains("exit=1") && test.contains("FAIL"), "{test}");
    // Each failure says what `cnet trace` found.
    assert!(test.contains("dropped at node2: net.ipv4.ip_forward is 0"), "{test}");
    assert!(r.section("status").contains("no-forwarding on node2"), "{}", r.section("status"));
    let list = r.section("list");
    for f in ["no-forwarding", "no-route", "strict-rp-filter", "mtu", "stop-tunnel"] {
        assert!(list.contains(f), "{f}: {list}");
    }
    let s2 = r.section("stage2");
    assert!(s2.contains("applies to stages 3 and 4") && s2.contains("exit=1"), "{s2}");
    assert_nothing_left(&r);
}

/// Past 60 checks, `cnet test` lists only the failures (none here) and a summary;
/// `--all` lists every check.
#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn test_output_is_a_summary_past_a_screenful() {
    require_root();
    let r = sandbox(&format!(
        r#"
cnet up single-node --containers 8 -q
mark short
cnet test
mark all
cnet test --all | wc -l
cnet down -q
{LEFTOVERS}"#
    ));
    r.ok();
    let short = r.section("short");
    // 9 sources x 10 targets = 90 checks: a summary, no rows.
    assert!(short.contains("90/90 checks passed") && short.contains("--all lists every check"), "{short}");
    assert!(!short.contains(" ok"), "{short}");
    let all: usize = r.section("all").trim().parse().unwrap();
    assert!(all > 90, "--all lists every row: {all} lines");
    assert_nothing_left(&r);
}
