//! cnet as a CNI plugin: what a container runtime runs as `/opt/cni/bin/cnet` (no
//! arguments, `CNI_COMMAND` set, the network config on stdin) to attach its containers to
//! the node's part of a stage that `cnet up <stage> --host --containers 0` built — as
//! flannel's plugin serves the node its daemon set up.
//!
//! Another caller of the same plan and executor as `cnet up`: ADD runs the stage-2 steps
//! for one container (model::plan::attach_steps); cnet's own IPAM leases the node's pod
//! addresses (ipam); DEL releases them and leaves the kernel's slow part to a reaper
//! (reaper). Answers and errors are the spec's JSON (spec).

pub mod attach;
pub mod config;
pub mod ipam;
pub mod reaper;
pub mod spec;

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::Value;

use spec::{CniError, Command, code};

/// Whether this process was started as a CNI plugin: no arguments, `CNI_COMMAND` set (as
/// runtimes run `/opt/cni/bin/<type>`). Decided before the command line is parsed.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os().len() <= 1 && std::env::var_os("CNI_COMMAND").is_some()
}

/// The plugin: one verb, its answer on stdout, exit 0; or the spec's error JSON on stdout
/// and exit 1.
pub fn plugin_main() -> ExitCode {
    // Logs only when asked (CNET_LOG=debug: each phase's time), on stderr, which runtimes
    // keep apart from the answer.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("CNET_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).without_time().init();
    }
    let get = |k: &str| std::env::var(k).ok();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let (version, answer) = match read {
        Ok(_) => serve(&get, &stdin),
        Err(e) => ("1.0.0".to_string(), Err(CniError::new(code::IO, "cannot read the network config from stdin", e.to_string()))),
    };
    let (out, status) = match answer {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => (Some(e.to_json(&version)), ExitCode::from(1)),
    };
    if let Some(v) = out {
        let mut o = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut o, &v);
        let _ = writeln!(o);
        let _ = o.flush();
    }
    status
}

/// The version a config asks for, read leniently (for an error about that same config).
fn version_in(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v["cniVersion"].as_str()?;
    spec::SUPPORTED_VERSIONS.contains(&s).then(|| s.to_string())
}

/// One call: (the version to answer in, the answer or the error).
pub fn serve(get: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, Result<Option<Value>, CniError>) {
    let version = version_in(stdin).unwrap_or_else(|| "1.0.0".into());
    let cmd = match spec::command(get) {
        Ok(c) => c,
        Err(e) => return (version, Err(e)),
    };
    if cmd == Command::Version {
        // stdin is `{"cniVersion": "..."}`; answer in the version asked.
        let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
            Ok("1.0.0".to_string())
        } else {
            serde_json::from_slice::<Value>(stdin)
                .map(|v| v["cniVersion"].as_str().unwrap_or("1.0.0").to_string())
                .map_err(|e| CniError::new(code::DECODE, "cannot decode VERSION's input", e.to_string()))
        };
        return match asked {
            Ok(a) => (a.clone(), Ok(Some(spec::version_result(&a)))),
            Err(e) => (version, Err(e)),
        };
    }
    let conf = match config::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (version, Err(e)),
    };
    let version = conf.version().to_string();
    let answer = match cmd {
        Command::Add | Command::Del | Command::Check => match spec::env(cmd, get) {
            Err(e) => Err(e),
            Ok(env) => match cmd {
                Command::Add => attach::add(&env, &conf).map(Some),
                Command::Del => attach::del(&env, Some(&conf)).map(|()| None),
                _ => attach::check(&env, &conf).map(|()| None),
            },
        },
        Command::Status => attach::status(&conf).map(|()| None),
        Command::Gc => attach::gc(&conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    (version, answer)
}
