//! cnet: the topologies of "Container Networking From Scratch", built step by step.

mod capture;
mod check;
mod cli;
mod commands;
mod diagram;
mod executor;
mod explain;
mod lab;
mod netlink;
mod node;
mod plan;
mod state;
mod status;
mod sys;
mod topology;
mod tunnel;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// Exit codes: 0 done, 1 failed (or a check failed), 2 the machine cannot do it (no root,
/// no kernel support).
fn run() -> ExitCode {
    sys::signal::default_sigpipe();
    let cli = Cli::parse();
    let level = match cli.verbose { 0 => "warn", 1 => "info", _ => "debug" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CNET_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let result = match &cli.command {
        Command::Up(a) => commands::up(a),
        Command::Down(a) => commands::down(a),
        Command::Status(a) => commands::status(a),
        Command::Test(a) => match commands::test(a) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Exec(a) => commands::exec(a),
        Command::Shell(a) => commands::shell(a),
        Command::Explain(a) => commands::explain(a),
        Command::Capture(a) => commands::capture(a),
        Command::Diagram(a) => commands::diagram(a),
        Command::Tunnel(a) => commands::tunnel(a),
        Command::Hold => commands::hold(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = node::chain(&e);
            eprintln!("cnet: error: {line}");
            let env = e.chain().any(|c| c.is::<commands::EnvError>())
                || line.contains("Operation not supported") || line.contains("/dev/net/tun");
            ExitCode::from(if env { 2 } else { 1 })
        }
    }
}

fn main() -> ExitCode {
    run()
}
