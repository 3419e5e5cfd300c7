//! The verbs that touch the kernel: ADD runs the stage-2 steps for one container through
//! the executor (model::plan::attach_steps), DEL hands its veth pair to the reaper, CHECK
//! reads the attachment back; STATUS and GC of spec 1.1. `inspect` is what CHECK and
//! `cnet status` both use to say what differs from what ADD made.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;
use serde_json::Value;

use super::config::{self, NetConf};
use super::ipam::{Lease, Pool, Request};
use super::reaper;
use super::spec::{self, CniError, Env, Interface, code};
use crate::apply::executor;
use crate::apply::netlink::{
    ALIAS_PREFIX, CNET_GROUP, Netlink, addr_views, dump_addrs, dump_routes, find_link, link_view, route_views,
};
use crate::model::plan::{Attachment, Step, attach_steps};

/// The stage name on what the plugin makes: its links' alias is `cnet:cni`.
pub const TAG: &str = "cni";

/// Where cnet's own container namespaces are (a runtime's are given by path).
const NETNS_DIR: &str = "/run/netns";

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO, "cannot start the async runtime", e.to_string()))
}

fn io(what: &str) -> impl Fn(anyhow::Error) -> CniError + '_ {
    move |e| CniError::new(code::IO, what, format!("{e:#}"))
}

fn mac_of(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => Some(b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")),
        _ => None,
    })
}

/// ADD: lease an address, run the attachment's steps; on failure undo them and give the
/// address back. The result lists the bridge, the node's end and the container's end.
pub fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let t = std::time::Instant::now();
    let net = config::node_network(conf)?;
    tracing::debug!("ADD: the node's network from {} after {:?}", net.source, t.elapsed());
    let netns = env.netns.clone().expect("ADD's environment has CNI_NETNS");
    let want = match env.arg("IP") {
        Some(ip) => Some(
            ip.parse::<Ipv4Addr>()
                .map_err(|_| CniError::new(code::INVALID_ENV, "invalid CNI_ARGS", format!("IP={ip} is not an IPv4 address")))?,
        ),
        None => None,
    };
    // Before the lease: nothing to give back if it cannot start.
    let rt = runtime()?;
    let pool = Pool::open(&net.bridge, true).map_err(io("cannot open the address pool"))?.expect("created");
    let lease = pool.allocate(
        &net,
        &Request {
            container_id: &env.container_id,
            ifname: &env.ifname,
            netns: &netns,
            network: &conf.name,
            name: env.arg("K8S_POD_NAME"),
            want,
        },
    )?;
    tracing::debug!("ADD: leased {} after {:?}", lease.ip, t.elapsed());
    let made = rt.block_on(attach(&lease, &net.bridge));
    tracing::debug!("ADD: attached after {:?}", t.elapsed());
    let interfaces = match made {
        Ok(i) => i,
        Err(e) => {
            let _ = pool.release(&env.container_id, &env.ifname);
            return Err(e);
        }
    };
    let ours = spec::add_result(conf.version(), &interfaces, 2, lease.ip, lease.gateway, conf.dns.as_ref());
    Ok(match &conf.prev_result {
        Some(prev) => spec::chain_result(prev, ours),
        None => ours,
    })
}

fn attachment(lease: &Lease, bridge: &str) -> Attachment {
    Attachment {
        netns: lease.netns.clone(),
        ifname: lease.ifname.clone(),
        host_veth: lease.host_veth.clone(),
        bridge: bridge.to_string(),
        addr: lease.ip,
        gateway: lease.gateway,
    }
}

/// The steps: the veth pair first (and once more after waiting for the reaper, if its
/// names were still held by a pair a DEL released); then the container's steps and the
/// node's, each in order, the two sequences side by side (they touch different
/// namespaces). If one fails, what was done is undone.
async fn attach(lease: &Lease, bridge: &str) -> Result<Vec<Interface>, CniError> {
    let t = std::time::Instant::now();
    let nl = Netlink::here(Path::new(NETNS_DIR)).map_err(io("cannot open netlink"))?;
    let plan = attach_steps(&attachment(lease, bridge));
    let steps: Vec<Step> = plan.iter().map(|p| p.step.clone()).collect();
    let first = make_pair(&nl, &steps[0], lease).await;
    let fail = |i: usize, e: anyhow::Error, undo: String| {
        CniError::new(
            code::STEP_FAILED,
            format!("step {} of {} ({}) failed", i + 1, steps.len(), plan[i].command),
            format!("{e:#}{undo}"),
        )
    };
    let first = first.map_err(|e| fail(0, e, String::new()))?;
    tracing::debug!("ADD: veth pair made after {:?}", t.elapsed());
    let in_container = |s: &Step| match s {
        Step::AddAddr { netns, .. } | Step::LinkUp { netns, .. } | Step::AddRoute { netns, .. } => netns.is_some(),
        _ => false,
    };
    // Each lane ends by reading back the MAC addresses of what it made (for the result).
    let lane = |container: bool| {
        let nl = &nl;
        let steps = &steps;
        async move {
            let mut done = Vec::new();
            for (i, s) in steps.iter().enumerate().skip(1).filter(|(_, s)| in_container(s) == container) {
                match executor::apply(nl, i, s, TAG).await {
                    Ok(d) => done.push(d),
                    Err(e) => return (done, Some((i, e)), Vec::new()),
                }
            }
            let macs = if container {
                let h = nl.handle(Some(&lease.netns)).ok();
                vec![match h {
                    Some(h) => mac_of_link(&h, &lease.ifname).await,
                    None => None,
                }]
            } else {
                let node = nl.node_handle();
                let (b, h) = futures::join!(mac_of_link(&node, bridge), mac_of_link(&node, &lease.host_veth));
                vec![b, h]
            };
            (done, None, macs)
        }
    };
    let ((mut done, err_c, mac_c), (done_n, err_n, mac_n)) = futures::join!(lane(true), lane(false));
    done.insert(0, first);
    done.extend(done_n);
    if let Some((i, e)) = [err_c, err_n].into_iter().flatten().min_by_key(|(i, _)| *i) {
        // Only what was done: a failed request made nothing.
        done.sort_by_key(|d| d.step);
        let errors = executor::teardown(&nl, &steps, &done, 0, TAG).await;
        let undo = if errors.is_empty() {
            "; the steps done were undone".to_string()
        } else {
            format!("; undoing the steps done also failed: {}", crate::error::join_errors(&errors))
        };
        return Err(fail(i, e, undo));
    }
    tracing::debug!("ADD: every step done after {:?}", t.elapsed());
    let mac = |v: &[Option<String>], i: usize| v.get(i).cloned().flatten();
    Ok(vec![
        Interface { name: bridge.to_string(), mac: mac(&mac_n, 0), sandbox: None },
        Interface { name: lease.host_veth.clone(), mac: mac(&mac_n, 1), sandbox: None },
        Interface { name: lease.ifname.clone(), mac: mac(&mac_c, 0), sandbox: Some(lease.netns.clone()) },
    ])
}

/// A link's MAC address, read from the kernel (None if it cannot be read).
async fn mac_of_link(h: &Handle, name: &str) -> Option<String> {
    find_link(h, name).await.ok().flatten().as_ref().and_then(mac_of)
}

/// The first step, the veth pair, when its names may still be held for a moment: by a pair
/// a DEL released (the reaper is deleting it), or by the pair of this address's last holder,
/// whose namespace went without a DEL (a stale lease: the kernel removes such a pair when it
/// gets to the namespace, and until then the node end's name is taken). The address is this
/// container's now, so such a pair is released too, and the pair is made once the name is
/// free (within 2 s). An interface of that name that the container has of its own, or a
/// node link cnet did not make, is a conflict: ADD fails at once.
async fn make_pair(nl: &Netlink, step: &Step, lease: &Lease) -> anyhow::Result<crate::apply::state::Done> {
    let until = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let err = match executor::apply(nl, 0, step, TAG).await {
            Ok(d) => return Ok(d),
            Err(e) => e,
        };
        // Only a name still held is worth waiting for; any other refusal is final.
        let name_taken = err
            .chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists));
        if !name_taken || std::time::Instant::now() > until {
            return Err(err);
        }
        let ctr = nl.handle(Some(&lease.netns))?;
        if find_link(&ctr, &lease.ifname).await?.is_some() && !reaper::busy() {
            return Err(err.context(format!("the container already has an interface named {}", lease.ifname)));
        }
        match find_link(&nl.node_handle(), &lease.host_veth).await? {
            Some(m) if is_plugins(&m) => {
                if nl.set_group(&lease.host_veth, reaper::DYING_GROUP).await.is_ok() {
                    reaper::kick()?;
                    reaper::wait_idle(Duration::from_secs(2));
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Some(m) if !reaper::busy() && link_view(&m).group != reaper::DYING_GROUP => {
                return Err(err.context(format!("{} is a link cnet did not make", lease.host_veth)));
            }
            _ if reaper::busy() => reaper::wait_idle(Duration::from_secs(2)),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Whether a link on the node is a veth end the plugin made (cnet's group, `cnet:cni`).
fn is_plugins(m: &LinkMessage) -> bool {
    let v = link_view(m);
    v.group == CNET_GROUP && v.alias.as_deref() == Some(&format!("{ALIAS_PREFIX}{TAG}"))
}

/// DEL: release the lease and hand the veth pair to the reaper. Succeeds when everything is
/// already gone, and when called again. Without a lease (lost), the node's end named in
/// prevResult is taken only if it is the plugin's and its other end is CNI_IFNAME in
/// CNI_NETNS: never another container's.
pub fn del(env: &Env, conf: Option<&NetConf>) -> Result<(), CniError> {
    let bridge = config::bridge_of(conf);
    let mut retire: Vec<(String, bool)> = Vec::new();
    if let Some(pool) = Pool::open(&bridge, false).map_err(io("cannot open the address pool"))?
        && let Some(l) = pool.release(&env.container_id, &env.ifname).map_err(io("cannot release the lease"))?
    {
        retire.push((l.host_veth, false));
    }
    if retire.is_empty()
        && let Some(prev) = conf.and_then(|c| c.prev_result.as_ref())
    {
        for i in prev["interfaces"].as_array().into_iter().flatten() {
            if let Some(name) = i["name"].as_str()
                && i["sandbox"].as_str().is_none_or(str::is_empty)
                && name != bridge
            {
                retire.push((name.to_string(), true));
            }
        }
    }
    if retire.is_empty() {
        return Ok(());
    }
    let rt = runtime()?;
    let marked = rt.block_on(async {
        let nl = Netlink::here(Path::new(NETNS_DIR)).map_err(io("cannot open netlink"))?;
        let node = nl.node_handle();
        let mut marked = false;
        for (name, verify) in &retire {
            let Ok(Some(m)) = find_link(&node, name).await else { continue };
            if !is_plugins(&m) || (*verify && !peer_is(&m, env).await) {
                continue;
            }
            match nl.set_group(name, reaper::DYING_GROUP).await {
                Ok(()) => marked = true,
                Err(e) if crate::apply::netlink::is_gone(&e) => {}
                Err(e) => return Err(CniError::new(code::STEP_FAILED, format!("cannot release {name}"), format!("{e:#}"))),
            }
        }
        Ok(marked)
    })?;
    // The reaper is forked: nothing of the runtime may be left running.
    drop(rt);
    if marked {
        reaper::kick().map_err(io("cannot start the reaper"))?;
    }
    Ok(())
}

/// Whether the node's end `m` is the peer of CNI_IFNAME in CNI_NETNS.
async fn peer_is(m: &LinkMessage, env: &Env) -> bool {
    let Some(netns) = env.netns.as_deref().filter(|p| Path::new(p).exists()) else { return false };
    let Ok(h) = Netlink::handle_at(Path::new(netns)) else { return false };
    let Ok(Some(c)) = find_link(&h, &env.ifname).await else { return false };
    link_view(&c).peer == Some(m.header.index)
}

/// What differs, in the kernel, from what ADD made for `lease` on `bridge` (empty: nothing).
pub async fn inspect(nl: &Netlink, lease: &Lease, bridge: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if lease.is_stale() {
        problems.push(format!("its namespace {} is gone (a stale lease)", lease.netns));
        return problems;
    }
    let node = nl.node_handle();
    let br = find_link(&node, bridge).await.ok().flatten().map(|m| m.header.index);
    match find_link(&node, &lease.host_veth).await.ok().flatten() {
        None => problems.push(format!("{} (the node's end) is missing", lease.host_veth)),
        Some(m) => {
            let v = link_view(&m);
            if br.is_none() || v.master != br {
                problems.push(format!("{} is not plugged into {bridge}", lease.host_veth));
            }
            if !v.up {
                problems.push(format!("{} is down", lease.host_veth));
            }
        }
    }
    let Ok(h) = Netlink::handle_at(Path::new(&lease.netns)) else {
        problems.push(format!("cannot enter its namespace {}", lease.netns));
        return problems;
    };
    problems.extend(inspect_container(&h, lease).await);
    problems
}

async fn inspect_container(h: &Handle, lease: &Lease) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(m) = find_link(h, &lease.ifname).await.ok().flatten() else {
        problems.push(format!("{} is missing in the container", lease.ifname));
        return problems;
    };
    let v = link_view(&m);
    if !v.up {
        problems.push(format!("{} is down in the container", lease.ifname));
    }
    let addrs = dump_addrs(h).await.map(|a| addr_views(&a)).unwrap_or_default();
    if !addrs.iter().any(|a| a.dev == v.index && a.addr == lease.ip) {
        problems.push(format!("{} has lost its address {}", lease.ifname, lease.ip));
    }
    let routes = dump_routes(h).await.map(|r| route_views(&r)).unwrap_or_default();
    let default = |r: &crate::apply::netlink::RouteView| r.dst.is_none_or(|d| d.prefix == 0);
    if !routes.iter().any(|r| default(r) && r.via == Some(lease.gateway) && r.dev == Some(v.index)) {
        problems.push(format!("the default route via {} dev {} is missing in the container", lease.gateway, lease.ifname));
    }
    problems
}

/// CHECK: the attachment as ADD made it, and as prevResult says it is.
pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(code::INVALID_CONFIG, "invalid network config", "CHECK needs prevResult (the result of ADD)"));
    };
    let bridge = config::bridge_of(Some(conf));
    let lease = Pool::open(&bridge, false)
        .map_err(io("cannot open the address pool"))?
        .and_then(|p| p.find(&env.container_id, &env.ifname))
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("container {} has no cnet attachment {}", env.container_id, env.ifname),
                "no lease: it was never added, or was deleted",
            )
        })?;
    let mut problems = Vec::new();
    if env.netns.as_deref() != Some(lease.netns.as_str()) {
        problems.push(format!("CNI_NETNS is {}, but ADD attached {}", env.netns.as_deref().unwrap_or("-"), lease.netns));
    }
    let prev_ips: Vec<&str> = prev["ips"].as_array().into_iter().flatten().filter_map(|i| i["address"].as_str()).collect();
    if !prev_ips.contains(&lease.ip.to_string().as_str()) {
        problems.push(format!("prevResult does not list {}, the address leased to it", lease.ip));
    }
    let rt = runtime()?;
    problems.extend(rt.block_on(async {
        match Netlink::here(Path::new(NETNS_DIR)) {
            Ok(nl) => inspect(&nl, &lease, &bridge).await,
            Err(e) => vec![format!("cannot open netlink: {e:#}")],
        }
    }));
    if problems.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        code::DRIFT,
        format!("{} of container {} differs from what ADD made", env.ifname, env.container_id),
        problems.join("; "),
    ))
}

/// STATUS (1.1): whether ADD can be served now: the node's part is up, its bridge there.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let net = config::node_network(conf).map_err(|e| CniError { code: code::NOT_AVAILABLE, ..e })?;
    let rt = runtime()?;
    let there = rt.block_on(async {
        let nl = Netlink::here(Path::new(NETNS_DIR)).ok()?;
        find_link(&nl.node_handle(), &net.bridge).await.ok().flatten()
    });
    match there {
        Some(_) => Ok(()),
        None => Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("the node's bridge {} is missing", net.bridge),
            format!("from {}: run `cnet up <stage> --host --containers 0`", net.source),
        )),
    }
}

/// GC (1.1): every lease of this network whose attachment the runtime no longer has goes
/// (as DEL would make it go), and every stale lease.
pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid();
    let bridge = config::bridge_of(Some(conf));
    let Some(pool) = Pool::open(&bridge, false).map_err(io("cannot open the address pool"))? else { return Ok(()) };
    pool.collect_stale().map_err(io("cannot collect stale leases"))?;
    for l in pool.leases() {
        if l.network == conf.name && !valid.iter().any(|(c, i)| *c == l.container_id && *i == l.ifname) {
            let env = Env { container_id: l.container_id.clone(), netns: None, ifname: l.ifname.clone(), args: Vec::new() };
            del(&env, Some(conf))?;
        }
    }
    Ok(())
}

/// Every attachment on this node, with its bridge.
pub fn attachments() -> Vec<(String, Lease)> {
    Pool::all().into_iter().flat_map(|p| p.leases().into_iter().map(move |l| (p.bridge(), l))).collect()
}

/// For `cnet down`: what the plugin left on the node goes (veths being deleted, the leases);
/// its veths in cnet's group went with the rest. Returns how many attachments were live:
/// their containers are the runtime's, left running, without their cnet interface.
pub async fn remove_all(nl: &Netlink, errors: &mut Vec<anyhow::Error>) -> usize {
    let live = attachments().iter().filter(|(_, l)| !l.is_stale()).count();
    if let Err(e) = nl.del_group(reaper::DYING_GROUP).await {
        errors.push(e.context("cannot delete the veths the CNI plugin released"));
    }
    let dir = super::ipam::cni_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(anyhow::Error::new(e).context(format!("cannot remove {}", dir.display()))),
    }
    live
}

/// Whether the plugin has state on this node (leases, a pool).
pub fn has_state() -> bool {
    super::ipam::cni_dir().exists()
}
