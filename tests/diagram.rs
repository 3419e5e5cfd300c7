//! `cnet diagram` of a stage that is up, drawn from the live kernel state, is the drawing of
//! its plan: the switch, the tunnel and what carries it included.

mod common;
use common::*;

#[test]
#[cfg_attr(cnet_unprivileged, ignore = "needs root")]
fn live_drawing_is_the_plans() {
    require_root();
    let stages = ["multi-node", "overlay", "overlay --backend vxlan", "overlay --nodes 3 --containers 1"];
    let mut script = String::new();
    for (i, args) in stages.iter().enumerate() {
        // Live while up; the plan once it is down (nothing up: the plan of what is asked).
        script.push_str(&format!(
            "cnet up {args} -q\nmark live{i}; cnet diagram; mark livedot{i}; cnet diagram --format dot\ncnet down -q\n\
             mark plan{i}; cnet diagram {args}; mark plandot{i}; cnet diagram {args} --format dot\n"
        ));
    }
    script.push_str("mark end\n");
    script.push_str(LEFTOVERS);
    let r = sandbox(&script);
    r.ok();
    // The same drawing but for the title: the first line of text, the label line of dot.
    let body = |s: String, skip: usize| {
        s.lines().enumerate().filter(|(n, _)| *n != skip).map(|(_, l)| format!("{l}\n")).collect::<String>()
    };
    for (i, args) in stages.iter().enumerate() {
        let live = r.section(&format!("live{i}"));
        assert!(live.starts_with("Stage ") && live.lines().next().unwrap().ends_with("live from the kernel"), "{args}: {live}");
        assert_eq!(body(live.clone(), 0), body(r.section(&format!("plan{i}")), 0), "{args}");
        assert_eq!(body(r.section(&format!("livedot{i}")), 1), body(r.section(&format!("plandot{i}")), 1), "{args}");
        assert!(live.contains(" L2 network 10.0.0.0/24 (a switch)"), "{args}: {live}");
    }
    assert!(r.section("live1").contains("tunnel tun0 ↔ tun0: UDP 9000, one IP packet per datagram"), "{}", r.section("live1"));
    assert!(r.section("live2").contains("tunnel vxlan0 ↔ vxlan0: VXLAN 4789, VNI 1"), "{}", r.section("live2"));
    assert!(r.section("live2").contains("172.16.1.0/24 via 172.16.1.100 dev vxlan0 onlink"), "{}", r.section("live2"));
    assert_eq!(r.section("live3").matches("═══╡  tun0").count(), 3, "{}", r.section("live3"));
    assert_nothing_left(&r);
}
