//! The CNI spec's side of the plugin: the verbs, the `CNI_*` variables and what makes them
//! valid, the versions cnet speaks, the result JSON as each version shapes it, and the
//! spec's error JSON with its codes.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

use crate::model::topology::Ipv4Net;

/// The versions whose config and result cnet reads and writes. 1.1.0 adds STATUS and GC
/// (and optional result fields cnet does not use).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The spec's error codes (0-99 are the spec's; 100 and up are cnet's own).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (the message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin).
    pub const IO: u32 = 5;
    /// Failed to decode content (the config).
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the node's part is not up (yet).
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS (1.1): the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// cnet: no free address left in the node's pod subnet.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// cnet: a step of the attachment failed (the kernel's reason in `details`).
    pub const STEP_FAILED: u32 = 101;
    /// cnet: CHECK found the attachment changed since ADD (what in `details`).
    pub const DRIFT: u32 = 102;
}

/// A failure as the spec reports it: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The error JSON for a config of `version` (the spec's own when the config had none).
    pub fn to_json(&self, version: &str) -> Value {
        json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {}): {}", self.msg, self.code, self.details)
    }
}

impl std::error::Error for CniError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// What the runtime said in the environment.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub container_id: String,
    /// CNI_NETNS; DEL may come without one (the namespace may be gone).
    pub netns: Option<String>,
    pub ifname: String,
    /// CNI_ARGS as key/value pairs (`IgnoreUnknown=1;K8S_POD_NAME=web;IP=...`).
    pub args: Vec<(String, String)>,
}

impl Env {
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The verb, from CNI_COMMAND.
pub fn command(get: &impl Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        other => Err(CniError::new(
            code::INVALID_ENV,
            "invalid CNI_COMMAND",
            format!("CNI_COMMAND={}: cnet knows ADD, DEL, CHECK, VERSION, STATUS and GC", other.unwrap_or("")),
        )),
    }
}

/// A container ID as the spec allows it: `^[A-Za-z0-9][A-Za-z0-9_.\-]*$`.
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An interface name as the kernel takes it: 1-15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// The variables `cmd` needs, checked as the spec says (every invalid one named). ADD and
/// CHECK need CNI_CONTAINERID, CNI_NETNS (an existing namespace) and CNI_IFNAME; DEL and
/// GC-like verbs the container ID and interface only.
pub fn env(cmd: Command, get: &impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let var = |k: &str| get(k).filter(|v| !v.is_empty());
    let needs_netns = matches!(cmd, Command::Add | Command::Check);
    let mut missing = Vec::new();
    let mut invalid = Vec::new();
    let container_id = var("CNI_CONTAINERID");
    match &container_id {
        None => missing.push("CNI_CONTAINERID"),
        Some(id) if !valid_container_id(id) => {
            invalid.push(format!("CNI_CONTAINERID={id} (letters, digits, '_', '.' and '-', starting with a letter or digit)"))
        }
        _ => {}
    }
    let ifname = var("CNI_IFNAME");
    match &ifname {
        None => missing.push("CNI_IFNAME"),
        Some(n) if !valid_ifname(n) => invalid.push(format!("CNI_IFNAME={n} (1-15 bytes, no '/', ':' or spaces)")),
        _ => {}
    }
    let netns = var("CNI_NETNS");
    match &netns {
        None if needs_netns => missing.push("CNI_NETNS"),
        Some(p) if needs_netns && !Path::new(p).is_absolute() => invalid.push(format!("CNI_NETNS={p} (not an absolute path)")),
        Some(p) if needs_netns && !Path::new(p).exists() => invalid.push(format!("CNI_NETNS={p} (no such network namespace)")),
        _ => {}
    }
    if !missing.is_empty() || !invalid.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("not set: {}", missing.join(", ")));
        }
        if !invalid.is_empty() {
            parts.push(format!("invalid: {}", invalid.join("; ")));
        }
        let names: Vec<String> = missing
            .iter()
            .map(|m| m.to_string())
            .chain(invalid.iter().map(|i| i.split('=').next().unwrap_or_default().to_string()))
            .collect();
        return Err(CniError::new(code::INVALID_ENV, format!("invalid CNI variables: {}", names.join(", ")), parts.join("; ")));
    }
    let args = var("CNI_ARGS")
        .map(|a| {
            a.split(';')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Env { container_id: container_id.unwrap_or_default(), netns, ifname: ifname.unwrap_or_default(), args })
}

/// Whether results of `version` carry `ips[].version` (before 1.0.0 they must).
fn ips_carry_version(version: &str) -> bool {
    version.starts_with("0.")
}

/// One interface of a result: `sandbox` set for the one inside the container.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
}

/// ADD's result as `version` shapes it: the interfaces (bridge, node end, container end),
/// the container's address (its `interface` is the container end's index), the default
/// route, and DNS as the config gave it.
pub fn add_result(
    version: &str,
    interfaces: &[Interface],
    container_if: usize,
    addr: Ipv4Net,
    gateway: Ipv4Addr,
    dns: Option<&Value>,
) -> Value {
    let ifs: Vec<Value> = interfaces
        .iter()
        .map(|i| {
            let mut v = json!({ "name": i.name });
            if let Some(m) = &i.mac {
                v["mac"] = json!(m);
            }
            if let Some(s) = &i.sandbox {
                v["sandbox"] = json!(s);
            }
            v
        })
        .collect();
    let mut ip = json!({ "interface": container_if, "address": addr.to_string(), "gateway": gateway.to_string() });
    if ips_carry_version(version) {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": ifs,
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": gateway.to_string() }],
        "dns": dns.cloned().unwrap_or_else(|| json!({})),
    })
}

/// A result built on `prev` (a plugin before cnet in the list): its interfaces, IPs and
/// routes first, cnet's after, IP interface indexes shifted to match.
pub fn chain_result(prev: &Value, ours: Value) -> Value {
    let mut out = prev.clone();
    let shift = prev["interfaces"].as_array().map_or(0, Vec::len);
    for key in ["interfaces", "ips", "routes"] {
        let mut list = prev[key].as_array().cloned().unwrap_or_default();
        for item in ours[key].as_array().cloned().unwrap_or_default() {
            let mut item = item;
            if key == "ips"
                && let Some(i) = item["interface"].as_u64()
            {
                item["interface"] = json!(i as usize + shift);
            }
            list.push(item);
        }
        out[key] = Value::Array(list);
    }
    out["cniVersion"] = ours["cniVersion"].clone();
    if out.get("dns").is_none_or(Value::is_null) {
        out["dns"] = ours["dns"].clone();
    }
    out
}

/// VERSION's answer.
pub fn version_result(asked: &str) -> Value {
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn getter(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        let g = getter(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0/1")]);
        let e = env(Command::Add, &g).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_CONTAINERID") && e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"), "{e}");
        // DEL does without a namespace.
        let g = getter(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        let e = env(Command::Del, &g).unwrap();
        assert_eq!((e.container_id.as_str(), e.netns), ("abc", None));
        assert!(command(&getter(&[("CNI_COMMAND", "FROB")])).is_err());
    }

    #[test]
    fn names_as_the_spec_allows_them() {
        assert!(valid_container_id("3f2a-b_c.d"));
        assert!(!valid_container_id("-x") && !valid_container_id("") && !valid_container_id("a b"));
        assert!(valid_ifname("eth0") && valid_ifname("net1.100"));
        assert!(!valid_ifname("..") && !valid_ifname("a:b") && !valid_ifname("sixteen-chars-xx") && !valid_ifname(""));
    }

    #[test]
    fn cni_args_split() {
        let g = getter(&[
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=172.16.0.9"),
        ]);
        let e = env(Command::Del, &g).unwrap();
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web"));
        assert_eq!(e.arg("IP"), Some("172.16.0.9"));
    }

    #[test]
    fn results_by_version() {
        let ifs = [
            Interface { name: "br0".into(), mac: Some("aa:bb:cc:dd:ee:ff".into()), sandbox: None },
            Interface { name: "eth0".into(), mac: Some("02:00:00:00:00:01".into()), sandbox: Some("/run/netns/x".into()) },
        ];
        let addr = "172.16.0.2/24".parse().unwrap();
        let gw = Ipv4Addr::new(172, 16, 0, 1);
        let old = add_result("0.4.0", &ifs, 1, addr, gw, None);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][0]["interface"], 1);
        let new = add_result("1.0.0", &ifs, 1, addr, gw, None);
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(new["interfaces"][0].get("sandbox").is_none());
        assert_eq!(new["routes"][0]["dst"], "0.0.0.0/0");
        let chained = chain_result(&json!({"cniVersion": "1.0.0", "interfaces": [{"name": "x"}], "ips": []}), new);
        assert_eq!(chained["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(chained["ips"][0]["interface"], 2);
    }
}
