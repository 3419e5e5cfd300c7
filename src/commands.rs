//! One function per subcommand: chooses lab or host, calls the modules, prints.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::apply::netlink::Netlink;
use crate::apply::state::NodeJournal;
use crate::cli::*;
use crate::error::Failure;
use crate::model::plan::node_plan;
use crate::model::topology::{Options, Topology};
use crate::observe::check::{self, NodeChecks};
use crate::observe::status::{self, NodeStatus};
use crate::run::lab::{self, Verbosity};
use crate::run::node::{self, NETNS_DIR, NodeRequest, Pace};

pub fn require_admin() -> Result<()> {
    if !crate::sys::ns::has_admin_caps() {
        return Err(Failure::environment(
            "cnet needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to build namespaces and links: run it with sudo",
        ));
    }
    Ok(())
}

pub fn options(t: &TopologyArgs) -> Options {
    Options {
        stage: t.stage,
        containers: t.containers,
        nodes: t.nodes,
        pod_cidr: t.pod_cidr,
        backend: t.backend,
        underlay_mtu: t.backend.default_underlay_mtu(),
        fabric: t.fabric,
        advertise_pod_routes: t.advertise_pod_routes,
        direct_routing: t.direct_routing,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

pub fn up(a: &UpArgs) -> Result<()> {
    let opts = options(&a.topo);
    let topo = Topology::new(opts.clone())?;
    if a.dry_run {
        say!("Dry run: nothing is changed.\n");
        crate::observe::explain::print_text(&topo);
        return Ok(());
    }
    require_admin()?;
    if !a.host && (!a.peers.is_empty() || a.underlay.is_some()) {
        bail!("--peer and --underlay apply to --host (a real machine); the lab wires its own nodes");
    }
    let rt = runtime()?;
    if a.host {
        let req = NodeRequest {
            options: opts,
            node: a.node,
            underlay: a.underlay.clone(),
            peers: a.peers.clone(),
            in_lab: a.in_lab,
            member: a.member.clone(),
        };
        let pace = if a.quiet {
            Pace::Quiet
        } else if a.step {
            Pace::Step
        } else {
            Pace::Run
        };
        let _lock = lock()?;
        let result = rt.block_on(interruptible(node::up(&req, pace), || node::down(true, a.in_lab)));
        // Not a plain drop: that would wait for a `--step` prompt's read of stdin, which
        // nobody answers after a Ctrl-C.
        rt.shutdown_background();
        result
    } else {
        let v = if a.quiet {
            Verbosity::Quiet
        } else if a.step {
            Verbosity::Interactive
        } else {
            Verbosity::Steps
        };
        let _lock = lock()?;
        rt.block_on(interruptible(lab::up(&opts, v), || lab::down(true)))?;
        if !a.quiet {
            lab::print_next_steps(&topo);
        }
        Ok(())
    }
}

/// Run `up`; on Ctrl-C stop it and remove what it had built, so that an interrupted `up`
/// leaves nothing half-built behind either.
async fn interruptible<U, D, F>(up: U, undo: D) -> Result<()>
where
    U: std::future::Future<Output = Result<()>>,
    D: FnOnce() -> F,
    F: std::future::Future<Output = Result<bool>>,
{
    // Registered before `up` takes its first step, so that no Ctrl-C is missed.
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("cannot catch Ctrl-C")?;
    tokio::select! {
        r = up => r,
        _ = interrupt.recv() => {
            let message = match undo().await {
                Ok(_) => "interrupted: what was built so far has been removed".to_string(),
                Err(e) => format!("interrupted, and removing what was built failed: {e:#}; run `cnet down`"),
            };
            Err(Failure::interrupted(message))
        }
    }
}

/// One cnet command at a time changes the machine: the lock is taken on /run/cnet itself,
/// so that no lock file is left behind. A second command waits, and says so.
fn lock() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = crate::apply::state::run_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::sys::process::lock_file(&dir, || tell!("cnet: waiting for another cnet command to finish..."))
}

pub fn down(a: &DownArgs) -> Result<()> {
    require_admin()?;
    let rt = runtime()?;
    let _lock = lock()?;
    // Both, when both are up: the lab, and what `up --host` built on this machine.
    let lab_down = if a.host { false } else { rt.block_on(lab::down(a.quiet))? };
    let host_down = rt.block_on(node::down(a.quiet, a.in_lab))?;
    if !lab_down && !host_down && !a.quiet {
        say!("nothing is up: nothing to remove");
    }
    Ok(())
}

/// Every node's status: the lab's nodes (each asked from inside), or this host's.
pub fn collect_statuses(host: bool) -> Result<Vec<NodeStatus>> {
    if !host && lab::is_up() {
        let mut v = Vec::new();
        for (i, status, stdout) in lab::in_every_node(&["status", "--host", "--json"])? {
            if !status.success() {
                bail!("node{i}: cnet status ended with {status} without saying why");
            }
            let mut list: Vec<NodeStatus> =
                serde_json::from_slice(&stdout).with_context(|| format!("node{i} answered no status"))?;
            v.append(&mut list);
        }
        Ok(v)
    } else {
        let rt = runtime()?;
        let status = rt.block_on(status::node_status()).map_err(|e| {
            if crate::apply::state::is_unusable(&e) {
                anyhow!("{e:#}: run `cnet down` to remove what carries cnet's marks")
            } else {
                e
            }
        })?;
        if status.is_none() {
            // No record: say so if cnet's marks are here all the same.
            let marks = rt.block_on(async {
                let nl = Netlink::here(&PathBuf::from(NETNS_DIR))?;
                crate::apply::sweep::survey(&nl, &PathBuf::from(NETNS_DIR), &Default::default(), false).await
            })?;
            if !marks.is_empty() {
                bail!("found what carries cnet's marks here ({marks}) but no record of the build: run `cnet down` to remove it");
            }
        }
        Ok(status.into_iter().collect())
    }
}

pub fn status(a: &StatusArgs) -> Result<()> {
    require_admin()?;
    let statuses = collect_statuses(a.host)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else if statuses.is_empty() {
        println!("nothing is up");
    } else {
        let busy = crate::sys::process::is_locked(&crate::apply::state::run_dir());
        if !a.host {
            if let Some(s) = crate::apply::state::LabState::read()? {
                let note = match (s.complete, busy) {
                    (true, _) => "",
                    (false, true) => " (being built or removed: a cnet up or down is running)",
                    (false, false) => " (incomplete: run `cnet down`)",
                };
                println!("lab: stage {}, {} node(s){note}", s.options.stage, s.nodes.len());
                if !s.faults.is_empty() {
                    println!("broken on purpose (cnet break): {}", s.faults.join(", "));
                }
                println!();
            }
        } else if busy {
            println!("(a cnet up or down is running: what follows may be half-built or half-removed)\n");
        }
        for s in &statuses {
            status::print(s);
            println!();
        }
    }
    Ok(())
}

/// Returns whether every check passed.
pub fn test(a: &TestArgs) -> Result<bool> {
    require_admin()?;
    let timeout = Duration::from_millis(a.timeout_ms);
    if !a.host
        && let Ok(Some(s)) = crate::apply::state::LabState::read()
        && !s.complete
    {
        if crate::sys::process::is_locked(&crate::apply::state::run_dir()) {
            bail!(
                "the lab is still being built ({} node(s) so far; a `cnet up` is running): test it once `up` is done",
                s.nodes.len()
            );
        }
        bail!("the lab is incomplete (its `up` was stopped half-way): run `cnet down`, then `cnet up` again");
    }
    let (results, multi) = if !a.host && lab::is_up() {
        let mut all = Vec::new();
        let args = ["test", "--host", "--json", "--no-trace", "--timeout-ms", &a.timeout_ms.to_string()].map(String::from);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for (i, status, stdout) in lab::in_every_node(&args)? {
            // Exit 1 with an answer: some checks failed, which the answer says.
            let mut r: Vec<NodeChecks> =
                serde_json::from_slice(&stdout).map_err(|_| anyhow!("node{i}: cnet test ended with {status} and no answer"))?;
            all.append(&mut r);
        }
        // Stages 5-6: what the outside host sees of node 1's published port.
        if let Ok(Some(lab)) = crate::apply::state::LabState::read()
            && lab.options.stage.has_nat()
        {
            let topo = Topology::new(lab.options.clone())?;
            let checks = crate::observe::probe::outside_probes(&topo);
            let at = lab::member_ns(crate::model::plan::OUTSIDE_MEMBER).net;
            let results = crate::sys::ns::in_netns(&at, || Ok(crate::observe::probe::run(&checks, &at, timeout)))?;
            all.push(NodeChecks { node: 0, hostname: "outside".into(), plan: "full".into(), results });
        }
        let multi = all.len() > 1;
        (all, multi)
    } else {
        let rt = runtime()?;
        let (topo, node) = rt.block_on(host_topology(a))?;
        // The containers a runtime attached here through cnet's CNI plugin too.
        let runtime: Vec<check::RuntimeContainer> = crate::cni::attach::attachments()
            .into_iter()
            .filter(|(_, l)| !l.is_stale())
            .map(|(_, l)| check::RuntimeContainer { name: l.label(), addr: l.ip, netns: PathBuf::from(&l.netns) })
            .collect();
        let (checks, plan) = check::node_checks_with(&topo, node, &runtime);
        let nl = rt.block_on(async { Netlink::here(&PathBuf::from(NETNS_DIR)) })?;
        let mut forget = |sources: &[String]| {
            // The round's containers and the node: the entries they made for one another.
            let mut names: Vec<Option<&str>> = sources.iter().filter(|s| *s != "node").map(|s| Some(s.as_str())).collect();
            names.push(None);
            for n in names {
                if let Err(e) = rt.block_on(nl.forget_neighbours(n)) {
                    tracing::warn!("cannot drop ARP entries in {}: {e:#}", n.unwrap_or("the node"));
                }
            }
        };
        let mut results = check::run_in_rounds(&checks, &PathBuf::from(NETNS_DIR), timeout, &mut forget);
        // Stages 5-6: the outside world, the published port, the service.
        let probes = crate::observe::probe::node_probes(&topo, node);
        let (pings, http): (Vec<_>, Vec<_>) = probes.into_iter().partition(|c| c.probe.is_ping());
        results.extend(check::run(&pings, &PathBuf::from(NETNS_DIR), timeout));
        results.extend(crate::observe::probe::run(&http, &PathBuf::from(NETNS_DIR), timeout));
        let hostname = node::hostname();
        (vec![NodeChecks { node, hostname, plan: plan.into(), results }], topo.stage().is_multi_node())
    };
    if results.is_empty() {
        bail!("nothing is up to test");
    }
    let mut results = results;
    if !a.no_trace {
        explain_failures(&mut results, a.host);
    }
    let pass = results.iter().all(|n| n.results.iter().all(|r| r.pass));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let total: usize = results.iter().map(|n| n.results.len()).sum();
        let passed: usize = results.iter().map(|n| n.results.iter().filter(|r| r.pass).count()).sum();
        // Past a screenful only the failures are worth reading; --all shows every row.
        let all = a.all || total <= check::ROWS_SHOWN;
        for n in &results {
            check::print_table(n, multi, all);
            println!();
        }
        let shown = if all { "" } else { " (only failures are listed; --all lists every check)" };
        println!("{passed}/{total} checks passed{shown}");
        if !pass {
            println!("`cnet status` names any step that is missing; `cnet trace FROM TO` shows where a packet stops.");
        }
    }
    Ok(pass)
}

/// How many failed checks are traced: each trace asks every hop on the way, and the first
/// few already say where the network is broken.
const TRACED_FAILURES: usize = 8;

/// Add to each failed check (the first few) what `cnet trace` finds: where the request, or
/// else the reply, is dropped and why ("dropped at node2: net.ipv4.ip_forward is 0").
fn explain_failures(results: &mut [NodeChecks], host: bool) {
    use crate::observe::trace::{TraceOptions, trace};
    let opts = TraceOptions { host, ..TraceOptions::default() };
    let mut traced = 0;
    for n in results.iter_mut() {
        let node = format!("node{}", n.node);
        for r in n.results.iter_mut().filter(|r| !r.pass && r.check.probe.is_ping()) {
            if traced == TRACED_FAILURES {
                return;
            }
            // A runtime's container (cnet's CNI plugin) is no place `trace` starts from;
            // `status` reads it back.
            if r.check.netns.is_some() {
                r.error = Some(format!("{}; `cnet status` says what differs in it", r.error.as_deref().unwrap_or("failed")));
                continue;
            }
            traced += 1;
            // Places as trace takes them: node2/con1 in the lab, node or con1 on this machine.
            let from = match (host, r.check.from.as_str()) {
                (true, f) => f.to_string(),
                (false, "node") => node.clone(),
                (false, c) => format!("{node}/{c}"),
            };
            let found = match trace(&from, &r.check.to.to_string(), &opts) {
                Ok(t) => match t.drop_reason() {
                    Some(why) => Some(why),
                    // The request gets there: then the reply does not. Follow it back.
                    // (On this machine alone the way back cannot be followed past it.)
                    None if !host => reply_drop(&r.check.target, &from),
                    None => None,
                },
                Err(e) => Some(format!("(trace: {e:#})")),
            };
            if let Some(why) = found {
                r.error = Some(format!("{}; {why}", r.error.as_deref().unwrap_or("failed")));
            }
        }
    }
}

/// Where the reply from `target` (a check's target: node2, node2/br0, node2/con1) back to
/// the check's source `from` is dropped, if it is.
fn reply_drop(target: &str, from: &str) -> Option<String> {
    use crate::observe::trace::{TraceOptions, trace};
    let back_from = target.strip_suffix("/br0").unwrap_or(target);
    let opts = TraceOptions::default();
    let t = trace(back_from, from, &opts).ok()?;
    t.drop_reason().map(|why| format!("the reply is {why}"))
}

/// The topology this machine has up (from its record), or the stage given on the command line.
async fn host_topology(a: &TestArgs) -> Result<(Topology, u32)> {
    if let Some(r) = NodeJournal::read()? {
        return Ok((r.header.topology()?, r.header.node));
    }
    let Some(stage) = a.stage else {
        bail!(
            "nothing is up: start a stage with `cnet up <stage>`, or check a machine built another way with `cnet test --host <stage>`"
        )
    };
    let options = Options::new(stage).with_backend(a.backend);
    let req = NodeRequest { options, node: a.node, underlay: None, peers: Vec::new(), in_lab: false, member: None };
    let nl = Netlink::here(&PathBuf::from(NETNS_DIR))?;
    let (topo, _) = node::resolve(&req, &nl).await?;
    Ok((topo, a.node))
}

pub fn exec(a: &ExecArgs) -> Result<()> {
    require_admin()?;
    let mut cmd = lab::command_in(&a.target, &a.command[0], &a.command[1..])?;
    let err = cmd.exec();
    Err(anyhow!("cannot run {} in {}: {err}", a.command[0], a.target))
}

pub fn shell(a: &ShellArgs) -> Result<()> {
    require_admin()?;
    let sh = std::env::var("SHELL").unwrap_or_else(|_| "/bin/bash".into());
    let mut cmd = lab::command_in(&a.node, &sh, &[])?;
    let err = cmd.exec();
    Err(anyhow!("cannot start {sh} in {}: {err}", a.node))
}

pub fn explain(a: &ExplainArgs) -> Result<()> {
    let topo = Topology::new(options(&a.topo))?;
    match a.format {
        ExplainFormat::Text => crate::observe::explain::print_text(&topo),
        ExplainFormat::Sh => print!("{}", crate::observe::explain::shell_script(&topo)),
        ExplainFormat::ShDown => print!("{}", crate::observe::explain::shell_down_script(&topo)),
        ExplainFormat::Json => {
            let plans: Vec<_> = topo.nodes.iter().map(|n| node_plan(&topo, n, crate::model::topology::UNDERLAY_DEV)).collect();
            // The lab's other members (router, gateway, outside): their plans beside the nodes'.
            let members: Vec<_> =
                crate::model::plan::members(&topo).iter().map(|m| crate::model::plan::member_plan(&topo, m)).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "topology": topo, "plans": plans, "members": members }))?
            );
        }
    }
    Ok(())
}

pub fn hold() -> Result<()> {
    // Keeps freshly unshared namespaces alive until the parent has bound them, then exits.
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)?;
    Ok(())
}

pub fn capture(a: &CaptureArgs) -> Result<()> {
    require_admin()?;
    if a.node == "host" || a.node == "." {
        let opts = crate::observe::capture::CaptureOptions {
            iface: a.iface.clone(),
            count: a.count,
            pcap: a.pcap.clone(),
            tunnel_ports: vec![crate::model::topology::TUNNEL_PORT],
            timeout: a.timeout.map(Duration::from_secs_f64),
            only: a.only.clone(),
            link_addrs: a.link_addrs,
        };
        let mut out = std::io::stdout().lock();
        crate::observe::capture::run(&opts, &mut out).with_context(|| format!("capture on {}", a.iface))?;
        return Ok(());
    }
    // In a lab node (or node/container): run this same command there, as `host`.
    let mut args = vec!["capture".to_string(), "host".into(), a.iface.clone()];
    if let Some(c) = a.count {
        args.extend(["-c".into(), c.to_string()]);
    }
    if let Some(t) = a.timeout {
        args.extend(["--timeout".into(), t.to_string()]);
    }
    if let Some(o) = &a.only {
        args.extend(["--only".into(), o.clone()]);
    }
    if a.link_addrs {
        args.push("-e".into());
    }
    if let Some(p) = &a.pcap {
        // The node shares the machine's filesystems but starts in /: make the path absolute.
        let abs = std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))?;
        args.extend(["--pcap".into(), abs.to_string_lossy().into_owned()]);
    }
    Err(lab::cnet_in(&a.node, &args)?.exec())
}

/// The options of what is up here: the lab's, or what `up --host` built on this machine.
fn live_options() -> Option<Options> {
    match crate::apply::state::LabState::read() {
        Ok(Some(lab)) => Some(lab.options),
        _ => NodeJournal::read().ok().flatten().and_then(|r| r.header.topology().ok()).map(|t| t.options),
    }
}

pub fn diagram(a: &DiagramArgs) -> Result<()> {
    // Live when something is up (and we may look), else the plan of the stage asked for.
    let live = if crate::sys::ns::has_admin_caps() && (lab::is_up() || NodeJournal::read().ok().flatten().is_some()) {
        collect_statuses(false)?
    } else {
        Vec::new()
    };
    let live_stage: Option<crate::model::topology::Stage> = live.first().and_then(|s| s.stage.parse().ok());
    let Some(stage) = a.stage.or(live_stage) else {
        bail!("nothing is up: name a stage to draw its plan, e.g. `cnet diagram overlay`")
    };
    // What is up is drawn when it is what was asked for: the stage, and every option given.
    let up = live_options().filter(|_| live_stage.is_some());
    let asked = |o: &Options| {
        o.stage == stage
            && a.nodes.is_none_or(|n| n == o.nodes)
            && a.containers.is_none_or(|c| c == o.containers)
            && a.backend.is_none_or(|b| b == o.backend)
            && a.fabric.is_none_or(|f| f == o.fabric)
    };
    let d = if up.as_ref().is_some_and(asked) || (live_stage == Some(stage) && up.is_none()) {
        let d = crate::observe::diagram::from_status(&live)?;
        match &up {
            Some(o) => d.with_fabric(&Topology::new(o.clone())?),
            None => d,
        }
    } else {
        let mut opts = Options::new(stage).with_backend(a.backend.unwrap_or_default());
        opts.nodes = a.nodes.unwrap_or(opts.nodes);
        opts.containers = a.containers.unwrap_or(opts.containers);
        opts.fabric = a.fabric.unwrap_or_default();
        crate::observe::diagram::from_plan(&Topology::new(opts)?)
    };
    match a.format {
        DiagramFormat::Text => print!("{}", d.text()),
        DiagramFormat::Dot => print!("{}", d.dot()),
    }
    Ok(())
}

/// `cnet trace FROM TO`: the packet's path, hop by hop. Returns whether it gets there (or,
/// with --host, leaves this machine on its way); a drop is exit 1, as a failed check is.
pub fn trace(a: &TraceArgs) -> Result<bool> {
    require_admin()?;
    let opts = crate::observe::trace::TraceOptions {
        host: a.host,
        size: a.size,
        arrive_on: a.arrive_on.clone(),
        src: a.src,
        ttl: a.ttl,
    };
    let t = crate::observe::trace::trace(&a.from, &a.to, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        print!("{}", crate::observe::trace::render(&t));
    }
    Ok(t.drop_reason().is_none())
}

/// `cnet tunnel`: the data plane in the foreground until SIGINT/SIGTERM.
pub fn tunnel(a: &TunnelArgs) -> Result<()> {
    require_admin()?;
    let cfg = crate::tunnel::TunnelConfig {
        dev: a.dev.clone(),
        local: a.local,
        peers: a.peers.clone(),
        stats_path: a.stats.clone(),
        offload: if a.no_offload { crate::tunnel::OffloadMode::Off } else { crate::tunnel::OffloadMode::Auto },
        wire: a.wire,
        handshake: a.handshake,
    };
    crate::tunnel::run(&cfg)
}

/// `cnet completions SHELL`: clap_complete's script for the whole command line.
pub fn completions(a: &CompletionsArgs) -> Result<()> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(a.shell, &mut cmd, "cnet", &mut std::io::stdout());
    Ok(())
}

/// `cnet man`: the manual page, from the same definitions as `--help`.
pub fn man() -> Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).context("cannot write the manual page")
}

/// `cnet bpf-object`: the eBPF object this build carries, to stdout.
pub fn bpf_object() -> Result<()> {
    use std::io::Write as _;
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("this writes a binary ELF object: redirect it, `cnet bpf-object > cnet-tunnel.bpf.o`");
    }
    std::io::stdout().write_all(crate::apply::ebpf::object_bytes()?).context("cannot write the eBPF object")
}

/// `cnet break FAULT NODE` (or `--list`): one fault, put in by the node itself.
pub fn break_(a: &BreakArgs) -> Result<()> {
    use crate::model::fault::Fault;
    if a.list {
        for f in Fault::ALL {
            say!("{}", crate::out::wrap(&format!("{:<17} ", f.name()), &" ".repeat(18), f.teaches()));
        }
        return Ok(());
    }
    require_admin()?;
    let (fault, node) = (a.fault.expect("clap requires it"), a.node.as_deref().expect("clap requires it"));
    let _lock = lock()?;
    let mut c = lab::cnet_in(node, &["__break".to_string(), fault.name().to_string()])?;
    c.command().stdin(std::process::Stdio::null());
    let (_, out) = c.run()?;
    let done = String::from_utf8_lossy(&out).trim().to_string();
    lab::record_fault(node, fault.name())?;
    say!("{node}: {done}");
    say!("{}", crate::out::wrap("  ", "  ", fault.teaches()));
    say!("`cnet test` finds it, `cnet trace` shows where packets stop; `cnet down` removes it all.");
    Ok(())
}

/// `cnet __break FAULT`, inside the node.
pub fn break_here(a: &BreakHereArgs) -> Result<()> {
    let done = runtime()?.block_on(crate::apply::fault::apply(a.fault))?;
    println!("{done}");
    Ok(())
}
