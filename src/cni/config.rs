//! The network config the runtime passes on stdin, and the node's network it points at:
//! the node's bridge and pod subnet from cnet's record (what `cnet up --host` built), or
//! from the config when it gives them.

use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::Value;

use super::spec::{CniError, SUPPORTED_VERSIONS, code};
use crate::apply::state::{NodeJournal, is_unusable};
use crate::model::topology::{Ipv4Net, Stage};

/// The bridge `cnet up` builds (stages 2-4).
pub const BRIDGE: &str = "br0";

/// One plugin's execution config, as libcni hands it over (list's `cniVersion` and `name`
/// inserted). Keys cnet does not know are left alone, as the spec asks.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// The node's bridge (default br0, the one `cnet up` builds).
    #[serde(default)]
    pub bridge: Option<String>,
    /// The node's pod subnet, when no `cnet up` record gives it.
    #[serde(default)]
    pub subnet: Option<String>,
    /// The containers' gateway (default the subnet's first address, the bridge's).
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub ip_masq: Option<bool>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC (1.1): the attachments the runtime still has.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Value>>,
    /// The same under the name libcni 1.2 also sends (a typo in an early 1.1 draft).
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Value>>,
}

impl NetConf {
    /// The version to answer in (the spec's newest cnet speaks when the config had none).
    pub fn version(&self) -> &str {
        if self.cni_version.is_empty() { "1.0.0" } else { &self.cni_version }
    }

    /// GC's list of (container ID, interface) still in use.
    pub fn valid(&self) -> Vec<(String, String)> {
        self.valid_attachments
            .iter()
            .chain(self.attachments.iter())
            .flatten()
            .filter_map(|a| Some((a["containerID"].as_str()?.to_string(), a["ifname"].as_str()?.to_string())))
            .collect()
    }
}

/// Decode and validate stdin's config.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE, "cannot decode the network config", format!("{e}")))?;
    if conf.cni_version.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "invalid network config", "cniVersion is missing"));
    }
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {}", conf.cni_version),
            format!("cnet speaks {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "invalid network config", "name is missing"));
    }
    if let Some(ipam) = &conf.ipam {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported field ipam: {ipam}"),
            "cnet leases the node's pod addresses itself: remove ipam from the config",
        ));
    }
    if conf.ip_masq == Some(true) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "unsupported field ipMasq: true",
            "cnet does not masquerade (the talk's network routes pod addresses as they are)",
        ));
    }
    if let Some(b) = &conf.bridge
        && !super::spec::valid_ifname(b)
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network config",
            format!("bridge: '{b}' is not an interface name"),
        ));
    }
    Ok(conf)
}

/// The node's network as a container joins it.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Addresses of the subnet held by the node itself: the bridge, tun0's .100, the
    /// containers `cnet up` made.
    pub reserved: Vec<Ipv4Addr>,
    /// Where it was read: "cnet's record (stage overlay, node 1)" or "the network config".
    pub source: String,
}

fn invalid(details: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, "invalid network config", details)
}

/// The config's own subnet and gateway, if it gives them.
fn from_config(conf: &NetConf) -> Result<Option<(Ipv4Net, Ipv4Addr)>, CniError> {
    let Some(s) = &conf.subnet else {
        if conf.gateway.is_some() {
            return Err(invalid("gateway is given without subnet".into()));
        }
        return Ok(None);
    };
    let subnet: Ipv4Net = s.parse().map_err(|e| invalid(format!("subnet: {e:#}")))?;
    let subnet = subnet.trunc();
    if subnet.prefix > 30 {
        return Err(invalid(format!("subnet {subnet} is too small: it needs the gateway and at least one container")));
    }
    let gateway = match &conf.gateway {
        Some(g) => g.parse::<Ipv4Addr>().map_err(|_| invalid(format!("gateway: '{g}' is not an IPv4 address")))?,
        None => subnet.nth(1).expect("a /30 or larger has a first address"),
    };
    if !subnet.contains(gateway) || gateway == subnet.network() {
        return Err(invalid(format!("gateway {gateway} is not a host address of subnet {subnet}")));
    }
    Ok(Some((subnet, gateway)))
}

/// The node's network: cnet's record first (the node's part `cnet up --host` built, as
/// flannel's plugin reads its daemon's subnet.env), else the config's `subnet`. A config
/// that contradicts the record is refused; no network at all is "try again later".
pub fn node_network(conf: &NetConf) -> Result<Network, CniError> {
    let given = from_config(conf)?;
    let record = match NodeJournal::read() {
        Ok(r) => r,
        Err(e) if is_unusable(&e) => {
            return Err(CniError::new(
                code::TRY_AGAIN,
                "the node's part is not usable",
                format!("{e:#}: run `cnet down`, then `cnet up <stage> --host --containers 0`"),
            ));
        }
        Err(e) => return Err(CniError::new(code::IO, "cannot read cnet's record", format!("{e:#}"))),
    };
    if let Some(r) = record {
        let topo =
            r.header.topology().map_err(|e| CniError::new(code::TRY_AGAIN, "cnet's record is unusable", format!("{e:#}")))?;
        let stage = topo.stage();
        let node = topo
            .node(r.header.node)
            .map_err(|e| CniError::new(code::TRY_AGAIN, "cnet's record is unusable", format!("{e:#}")))?;
        let Some(bridge) = node.bridge.filter(|_| stage != Stage::Namespace) else {
            return Err(CniError::new(
                code::TRY_AGAIN,
                "the node's part has no bridge",
                "stage 1 (namespace) is up: containers join the bridge of stages 2-4 (`cnet down`, then `cnet up single-node --host --containers 0`)",
            ));
        };
        if let Some(b) = &conf.bridge
            && b != BRIDGE
        {
            return Err(invalid(format!("bridge {b}: the node's part `cnet up` built has {BRIDGE}")));
        }
        if let Some((subnet, gateway)) = given
            && (subnet != bridge.trunc() || gateway != bridge.addr)
        {
            return Err(invalid(format!(
                "subnet {subnet} (gateway {gateway}) is not this node's pod subnet {} (gateway {}) that `cnet up` built: leave subnet out, or give that one",
                bridge.trunc(),
                bridge.addr
            )));
        }
        let mut reserved = vec![bridge.addr];
        reserved.extend(node.containers.iter().map(|c| c.addr.addr));
        if stage == Stage::Overlay {
            reserved.push(node.tun_addr().addr);
        }
        return Ok(Network {
            bridge: BRIDGE.into(),
            subnet: bridge.trunc(),
            gateway: bridge.addr,
            reserved,
            source: format!("cnet's record (stage {stage}, node {})", r.header.node),
        });
    }
    match given {
        Some((subnet, gateway)) => Ok(Network {
            bridge: conf.bridge.clone().unwrap_or_else(|| BRIDGE.into()),
            subnet,
            gateway,
            reserved: vec![gateway],
            source: "the network config".into(),
        }),
        None => Err(CniError::new(
            code::TRY_AGAIN,
            "the node's part is not up",
            "no cnet record here: run `cnet up single-node --host --containers 0` (or `multi-node`/`overlay --host --node N --containers 0`) first, or give \"subnet\" in the network config",
        )),
    }
}

/// The bridge DEL and GC look in: the config's, else cnet's.
pub fn bridge_of(conf: Option<&NetConf>) -> String {
    conf.and_then(|c| c.bridge.clone()).unwrap_or_else(|| BRIDGE.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_carry_the_spec_codes() {
        let code_of = |s: &str| parse(s.as_bytes()).unwrap_err().code;
        assert_eq!(code_of("{not json"), code::DECODE);
        assert_eq!(code_of(r#"{"name":"n","type":"cnet"}"#), code::INVALID_CONFIG);
        assert_eq!(code_of(r#"{"cniVersion":"9.9.9","name":"n","type":"cnet"}"#), code::INCOMPATIBLE_VERSION);
        assert_eq!(code_of(r#"{"cniVersion":"1.0.0","type":"cnet"}"#), code::INVALID_CONFIG);
        let e = parse(br#"{"cniVersion":"1.0.0","name":"n","type":"cnet","ipam":{"type":"host-local"}}"#).unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        assert!(e.msg.contains("ipam") && e.msg.contains("host-local"), "{e}");
        let ok = parse(br#"{"cniVersion":"0.4.0","name":"n","type":"cnet","unknownKey":1,"subnet":"10.9.0.0/24"}"#).unwrap();
        assert_eq!(from_config(&ok).unwrap(), Some(("10.9.0.0/24".parse().unwrap(), Ipv4Addr::new(10, 9, 0, 1))));
    }

    #[test]
    fn config_subnets_are_checked() {
        let conf = |extra: &str| parse(format!(r#"{{"cniVersion":"1.0.0","name":"n"{extra}}}"#).as_bytes()).unwrap();
        assert!(from_config(&conf(r#","subnet":"10.9.0.0/31""#)).is_err());
        assert!(from_config(&conf(r#","subnet":"10.9.0.0/24","gateway":"10.8.0.1""#)).is_err());
        assert!(from_config(&conf(r#","subnet":"nonsense""#)).is_err());
        assert!(from_config(&conf(r#","gateway":"10.8.0.1""#)).is_err());
        assert_eq!(from_config(&conf("")).unwrap(), None);
    }
}
