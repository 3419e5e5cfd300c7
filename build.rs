//! Marks the privileged tests as ignored (visibly not run) when the tests are built by a
//! user who cannot run them, outside CI. Under CI they stay, and fail loudly without root.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cnet_unprivileged)");
    println!("cargo::rerun-if-changed=build.rs");
    // Who builds: a change of user (sudo) or of CI must decide again.
    for v in ["CI", "USER", "SUDO_USER", "LOGNAME"] {
        println!("cargo::rerun-if-env-changed={v}");
    }
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:").and_then(|r| r.split_whitespace().nth(1).map(str::to_string)))
        })
        .and_then(|u| u.parse::<u32>().ok());
    if euid != Some(0) && std::env::var_os("CI").is_none() {
        println!("cargo::rustc-cfg=cnet_unprivileged");
    }
}
