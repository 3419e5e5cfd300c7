//! Stages 5 and 6: cnet's NAT rules as data — which rule, in which chain, and the `nft`
//! command it equals. The rules themselves (their nftables expressions and their text) come
//! from the nft library; applying them is apply::executor's.

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use crate::model::topology::Ipv4Net;
use crate::nft::{self, Ipv4Prefix};

/// The table that is cnet's alone (its comment says so): `table ip cnet`.
pub const TABLE: &str = nft::CNET_TABLE;

/// cnet's base chains, all of type nat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatChain {
    /// Packets arriving (hook prerouting, priority dstnat): DNAT for a port or a VIP.
    Prerouting,
    /// The node's own packets (hook output, -100): DNAT for them too.
    Output,
    /// Packets leaving (hook postrouting, priority srcnat): masquerade.
    Postrouting,
}

impl NatChain {
    pub fn name(self) -> &'static str {
        match self {
            NatChain::Prerouting => "prerouting",
            NatChain::Output => "output",
            NatChain::Postrouting => "postrouting",
        }
    }

    pub fn base(self) -> nft::BaseChain {
        let (hook, priority) = match self {
            NatChain::Prerouting => (nft::Hook::Prerouting, -100),
            NatChain::Output => (nft::Hook::Output, -100),
            NatChain::Postrouting => (nft::Hook::Postrouting, 100),
        };
        nft::BaseChain { chain_type: "nat", hook, priority }
    }

    /// `nft add chain ...` as `nft` prints it.
    pub fn command(self) -> String {
        let t = table_skeleton();
        let c = nft::Chain { name: self.name().into(), base: Some(self.base()), rules: Vec::new() };
        let t = nft::Table { chains: vec![c], ..t };
        t.nft_commands().into_iter().nth(1).unwrap_or_default()
    }
}

/// One of cnet's NAT rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum NatRule {
    /// Pod traffic to anything but pods and nodes leaves with the node's address.
    Masquerade { pods: Ipv4Net, except: Vec<Ipv4Net>, oif: Option<String> },
    /// A port on any of the node's addresses forwarded to a container's (`fib daddr type local`).
    Publish { port: u16, to: SocketAddrV4 },
    /// A container reaching a DNAT target on its own bridge is masqueraded (else the target
    /// answers it directly, from an address it never spoke to).
    Hairpin { subnet: Ipv4Net, backend: SocketAddrV4 },
    /// `localhost:PORT` on the node: 127.0.0.0/8 cannot leave the node as a source.
    MasqueradeFrom { src: Ipv4Net },
    /// Rule `pick` of a service's cascade over `backends` (kube-proxy's scheme: each rule
    /// takes its backend with probability 1/(backends left), the last takes the rest).
    ServicePick { vip: SocketAddrV4, backends: Vec<SocketAddrV4>, pick: usize },
}

fn prefix(n: &Ipv4Net) -> Ipv4Prefix {
    Ipv4Prefix::new(n.trunc().addr, n.prefix)
}

impl NatRule {
    /// The rule as the nft library builds it: its expressions and its text.
    pub fn to_nft(&self) -> nft::Rule {
        match self {
            NatRule::Masquerade { pods, except, oif } => {
                let except: Vec<Ipv4Prefix> = except.iter().map(prefix).collect();
                nft::masquerade_egress(prefix(pods), &except, oif.as_deref())
            }
            NatRule::Publish { port, to } => nft::publish_port(nft::PublishOn::Local, *port, *to),
            NatRule::Hairpin { subnet, backend } => nft::hairpin_masquerade(prefix(subnet), *backend),
            NatRule::MasqueradeFrom { src } => nft::masquerade_from(prefix(src)),
            NatRule::ServicePick { vip, backends, pick } => {
                nft::service(*vip, backends, nft::ServiceEncoding::Cascade).swap_remove(*pick)
            }
        }
    }

    /// `nft add rule ip cnet CHAIN ...`
    pub fn command(&self, chain: NatChain) -> String {
        let text = self.to_nft().text;
        let quote = text.contains('"') || text.contains('!');
        let rule = format!("add rule ip {TABLE} {} {text}", chain.name());
        if quote { format!("nft '{rule}'") } else { format!("nft {rule}") }
    }
}

/// `table ip cnet`, marked by its comment, with no chains: what each step adds to.
pub fn table_skeleton() -> nft::Table {
    nft::Table {
        family: nft::Family::Ip,
        name: TABLE.into(),
        comment: Some(nft::CNET_COMMENT.into()),
        owner: false,
        chains: Vec::new(),
    }
}

/// `nft add table ...` as `nft` prints it.
pub fn table_command() -> String {
    table_skeleton().nft_commands().into_iter().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn commands_read_as_nft_prints_them() {
        assert_eq!(table_command(), "nft 'add table ip cnet { comment \"cnet\"; }'");
        assert!(
            NatChain::Prerouting.command().contains("type nat hook prerouting priority dstnat"),
            "{}",
            NatChain::Prerouting.command()
        );
        let to = SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 2), 8000);
        assert_eq!(
            NatRule::Publish { port: 8080, to }.command(NatChain::Prerouting),
            "nft add rule ip cnet prerouting tcp dport 8080 fib daddr type local dnat to 172.16.0.2:8000"
        );
        let m = NatRule::Masquerade {
            pods: "172.16.0.0/16".parse().unwrap(),
            except: vec!["172.16.0.0/16".parse().unwrap(), "10.0.0.0/24".parse().unwrap()],
            oif: Some("enp0s8".into()),
        };
        assert_eq!(
            m.command(NatChain::Postrouting),
            "nft 'add rule ip cnet postrouting ip saddr 172.16.0.0/16 ip daddr != 172.16.0.0/16 ip daddr != 10.0.0.0/24 oifname \"enp0s8\" masquerade'"
        );
        let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        let b2 = SocketAddrV4::new(Ipv4Addr::new(172, 16, 1, 2), 8000);
        let first = NatRule::ServicePick { vip, backends: vec![to, b2], pick: 0 }.command(NatChain::Prerouting);
        let last = NatRule::ServicePick { vip, backends: vec![to, b2], pick: 1 }.command(NatChain::Prerouting);
        assert!(first.contains("numgen random mod 2") && first.ends_with("dnat to 172.16.0.2:8000"), "{first}");
        assert!(!last.contains("numgen") && last.ends_with("dnat to 172.16.1.2:8000"), "{last}");
    }
}
