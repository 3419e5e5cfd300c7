//! What carries cnet's marks, found in the kernel rather than in the record: the safety net
//! under `down` when the record is missing, damaged or short of what was really built.
//!
//! The marks: links in cnet's link group (set atomically when a link is created, and on the
//! container end of every veth too, so a named namespace holding such a link is cnet's);
//! tunnel processes started by `up` (cnet's binary, `tunnel ... --stats /run/cnet/tunnel.json`,
//! running in this very network namespace). A route has no mark: only with no usable record,
//! and only when stage 3's links are found, the static routes stage 3 adds (a /24 of the
//! pod space via a gateway, added by hand) are taken for cnet's; cnet's nftables table `ip
//! cnet`, known by its comment. Nothing else is touched: a namespace without a marked link, a
//! link outside the group, a table without cnet's comment, another program.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use anyhow::Result;

use crate::apply::netlink::{ALIAS_PREFIX, CNET_GROUP, Netlink, dump_links, dump_routes, link_view, route_views};
use crate::apply::process::{Members, cnet_tunnels_here, stop_process};
use crate::model::ebpf::{Hook, PROG_DECAP};
use crate::model::nat;
use crate::model::plan::RouteSpec;
use crate::model::topology::{MAX_NODES, Stage, multi_node_pod_net};
use crate::nft;
use crate::sys::ns;

/// What was found carrying cnet's marks in this network namespace.
#[derive(Debug, Default)]
pub struct Marks {
    pub tunnels: Vec<u32>,
    pub links: Vec<String>,
    /// Named namespaces (under the netns directory) holding a link in cnet's group, with
    /// their identity, so that one renamed or replaced meanwhile is left alone.
    pub namespaces: Vec<(String, Option<(u64, u64)>)>,
    pub routes: Vec<RouteSpec>,
    /// Stages 5-6's table `ip cnet`, its comment saying it is cnet's.
    pub nat_table: bool,
    /// Devices (not cnet's) holding the ebpf backend's decapsulating filter on their ingress.
    pub bpf_filters: Vec<String>,
}

impl Marks {
    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
            && self.links.is_empty()
            && self.namespaces.is_empty()
            && self.routes.is_empty()
            && !self.nat_table
            && self.bpf_filters.is_empty()
    }
}

impl fmt::Display for Marks {
    /// "3 links, 2 namespaces, 1 tunnel" (what there is of each).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |n: usize, one: &str, many: &str| match n {
            0 => None,
            1 => Some(format!("1 {one}")),
            n => Some(format!("{n} {many}")),
        };
        let parts: Vec<String> = [
            count(self.links.len(), "link", "links"),
            count(self.namespaces.len(), "namespace", "namespaces"),
            count(self.tunnels.len(), "tunnel", "tunnels"),
            count(self.routes.len(), "route", "routes"),
            count(self.nat_table as usize, "nftables table", "nftables tables"),
            count(self.bpf_filters.len(), "eBPF filter", "eBPF filters"),
        ]
        .into_iter()
        .flatten()
        .collect();
        f.write_str(&if parts.is_empty() { "nothing".to_string() } else { parts.join(", ") })
    }
}

/// Find what is cnet's here. Namespaces named in `known` (the record's) are left to the
/// record; `infer_routes` only when there is no usable record.
pub async fn survey(nl: &Netlink, netns_dir: &Path, known: &HashSet<String>, infer_routes: bool) -> Result<Marks> {
    let links: Vec<_> = dump_links(&nl.node_handle()).await?.iter().map(link_view).collect();
    let ours: Vec<_> = links.iter().filter(|l| l.group == CNET_GROUP).collect();
    let mut marks =
        Marks { tunnels: cnet_tunnels_here(), links: ours.iter().map(|l| l.name.clone()).collect(), ..Marks::default() };
    if let Ok(dir) = std::fs::read_dir(netns_dir) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if known.contains(&name) || !ns::is_ns_file(&path) {
                continue;
            }
            if holds_marked_link(&path).await {
                marks.namespaces.push((name, ns::ns_id(&path)));
            }
        }
    }
    let stage3 = format!("{ALIAS_PREFIX}{}", Stage::MultiNode.name());
    if infer_routes && ours.iter().any(|l| l.alias.as_deref() == Some(stage3.as_str())) {
        let own: HashSet<u32> = ours.iter().map(|l| l.index).collect();
        let name_of = |i: u32| links.iter().find(|l| l.index == i).map(|l| l.name.clone());
        let pod_nets: Vec<_> = (1..=MAX_NODES).map(multi_node_pod_net).collect();
        for r in route_views(&dump_routes(&nl.node_handle()).await?) {
            let (Some(dst), Some(via), Some(dev)) = (r.dst, r.via, r.dev) else { continue };
            if r.by_hand
                && pod_nets.contains(&dst)
                && !own.contains(&dev)
                && let Some(dev) = name_of(dev)
            {
                marks.routes.push(RouteSpec { dst: Some(dst), via: Some(via), dev, onlink: false });
            }
        }
    }
    marks.nat_table = cnet_nat_table_here()?;
    for l in links.iter().filter(|l| l.group != CNET_GROUP) {
        if crate::apply::ebpf::has_filter(nl, &l.name, Hook::Ingress, PROG_DECAP).await.unwrap_or(false) {
            marks.bpf_filters.push(l.name.clone());
        }
    }
    Ok(marks)
}

/// Whether this namespace holds cnet's nftables table (by name and comment).
pub fn cnet_nat_table_here() -> Result<bool> {
    let table = nft::Nft::open()?.find_table(nft::Family::Ip, nat::TABLE)?;
    Ok(table.is_some_and(|t| t.is_cnet()))
}

async fn holds_marked_link(path: &Path) -> bool {
    match Netlink::handle_at(path) {
        Ok(h) => dump_links(&h).await.is_ok_and(|l| l.iter().map(link_view).any(|l| l.group == CNET_GROUP)),
        Err(_) => false,
    }
}

/// Put back the sysctls `up` changed, from their own log (state::SysctlLog), when the
/// journal that also holds them cannot be used: each one still at the value cnet set goes
/// back to the value it had; one changed since is left as it is. Returns how many, or None
/// when that log is gone too.
pub fn restore_sysctls(errors: &mut Vec<anyhow::Error>) -> Option<usize> {
    let log = crate::apply::state::SysctlLog::read()?;
    let mut restored = 0;
    for c in log.iter().rev() {
        match crate::apply::sysctl::read(&c.key) {
            Ok(now) if now == c.set && now != c.old => match crate::apply::sysctl::write(&c.key, &c.old) {
                Ok(()) => restored += 1,
                Err(e) => errors.push(e),
            },
            _ => {} // changed by someone since, already back, or its interface is gone
        }
    }
    Some(restored)
}

/// Remove what `survey` found and is still there; errors are collected, not fatal.
pub async fn remove(nl: &Netlink, marks: &Marks, errors: &mut Vec<anyhow::Error>) {
    // The tunnels first (they hold tun0), each checked again to be cnet's tunnel here.
    let still: HashSet<u32> = cnet_tunnels_here().into_iter().collect();
    for pid in marks.tunnels.iter().filter(|p| still.contains(p)) {
        if let Err(e) = stop_process(*pid) {
            errors.push(e.context("cannot stop a tunnel left running"));
        }
    }
    for r in &marks.routes {
        if let Err(e) = nl.del_route(None, r).await
            && !crate::apply::netlink::is_gone(&e)
        {
            errors.push(e.context(format!("cannot delete the route to {}", r.dst.map_or("default".into(), |d| d.to_string()))));
        }
    }
    if marks.nat_table
        && let Err(e) = nft::Nft::open().and_then(|mut n| n.delete_cnet_table(nft::Family::Ip, nat::TABLE))
    {
        errors.push(e.context("cannot delete cnet's nftables table"));
    }
    // The filter only (its programs and maps go with it): a clsact qdisc carries no mark,
    // and may be someone else's.
    for dev in &marks.bpf_filters {
        if let Err(e) = crate::apply::ebpf::detach(dev, Hook::Ingress, PROG_DECAP) {
            errors.push(e);
        }
    }
    if !marks.links.is_empty()
        && let Err(e) = nl.del_cnet_group().await
    {
        errors.push(e.context("cannot delete cnet's links"));
    }
    if !marks.namespaces.is_empty() {
        let members = Members::scan("net");
        for (name, id) in &marks.namespaces {
            let path = nl.netns_path(name);
            if ns::ns_id(&path) != *id {
                continue; // gone, or replaced by another namespace of that name
            }
            for pid in members.of(&path) {
                if let Err(e) = stop_process(pid) {
                    errors.push(e);
                }
            }
            if let Err(e) = nl.del_netns(name) {
                errors.push(e);
            }
        }
    }
}
