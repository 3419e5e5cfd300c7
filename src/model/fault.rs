//! Faults a learner can put into a working stage (`cnet break`), each one thing a real
//! network gets wrong, with what it teaches and the command it equals. Pure data.

use crate::model::topology::{Backend, Stage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The node stops routing: net.ipv4.ip_forward=0.
    NoForwarding,
    /// The route that carries the other node's pods (stage 1-2: the container's default route).
    NoRoute,
    /// Strict reverse-path filtering, as many distributions set it.
    StrictRpFilter,
    /// The underlay's MTU below what the overlay needs: big packets vanish, small ones pass.
    Mtu,
    /// The tunnel process stops (stage 4, cnet's tunnel).
    StopTunnel,
}

impl Fault {
    pub const ALL: [Fault; 5] = [Fault::NoForwarding, Fault::NoRoute, Fault::StrictRpFilter, Fault::Mtu, Fault::StopTunnel];

    pub fn name(self) -> &'static str {
        match self {
            Fault::NoForwarding => "no-forwarding",
            Fault::NoRoute => "no-route",
            Fault::StrictRpFilter => "strict-rp-filter",
            Fault::Mtu => "mtu",
            Fault::StopTunnel => "stop-tunnel",
        }
    }

    /// What breaking it teaches.
    pub fn teaches(self) -> &'static str {
        match self {
            Fault::NoForwarding => {
                "a node that does not forward is no router: packets for its containers from elsewhere (and theirs to elsewhere) stop at it, while the node itself still answers"
            }
            Fault::NoRoute => {
                "every packet needs a route: without the one to the other node's pods (or, in stages 1-2, the container's default route) the kernel answers 'network unreachable' before anything is sent"
            }
            Fault::StrictRpFilter => {
                "reverse-path filtering drops a packet whose way back leaves by another interface: in stage 4 a container's packet to the other node's own address arrives on enp0s8 but its way back is tun0"
            }
            Fault::Mtu => {
                "an overlay costs bytes: with the underlay below tun0's MTU + 28, full-size packets cannot be sent (pings of the default size still pass; try ping -M do -s 1400)"
            }
            Fault::StopTunnel => "tun0 is only an interface: without the process behind it, packets routed into it go nowhere",
        }
    }

    /// Whether the fault means anything in this stage.
    pub fn applies_to(self, stage: Stage, backend: Backend) -> Result<(), String> {
        let ok = match self {
            Fault::NoForwarding | Fault::StrictRpFilter => stage.is_multi_node(),
            Fault::NoRoute => true,
            Fault::Mtu => stage.has_overlay(),
            Fault::StopTunnel => stage.has_overlay() && matches!(backend, Backend::Udp | Backend::UdpGso),
        };
        let needs = match self {
            Fault::NoForwarding | Fault::StrictRpFilter => "stages 3 and 4 (a node that routes between nodes)",
            Fault::NoRoute => "every stage",
            Fault::Mtu => "stage 4 (an overlay)",
            Fault::StopTunnel => "stage 4 with cnet's tunnel process (not --backend vxlan or ebpf)",
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{} applies to {needs}, not to stage {} ({})", self.name(), stage.number(), stage.name()))
        }
    }
}
