//! cnet: the topologies of "Container Networking From Scratch", built step by step.

/// `println!` that ignores a closed stdout: `cnet up | head` must still finish (or undo)
/// the build rather than die half-way.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// The same for stderr (`eprintln!` panics when stderr is a closed pipe).
macro_rules! tell {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

mod capture;
mod check;
mod checksum;
mod cli;
mod commands;
mod diagram;
mod executor;
mod explain;
mod lab;
mod netlink;
mod node;
mod plan;
mod process;
mod state;
mod status;
mod sweep;
mod sys;
mod sysctl;
mod topology;
mod tunnel;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// Exit codes: 0 done, 1 failed (or a check failed), 2 the machine cannot do it (no root,
/// no kernel support).
fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; a bad request is exit 1, like any other.
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    // Commands that only report end quietly when their reader goes away (`cnet test | head`);
    // those that change the machine keep going (their output is written with `say!`).
    if !matches!(cli.command, Command::Up(_) | Command::Down(_) | Command::Tunnel(_) | Command::Hold) {
        sys::signal::default_sigpipe();
    }
    let level = match cli.verbose { 0 => "warn", 1 => "info", _ => "debug" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CNET_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            let line = format!("{e:#}");
            tell!("cnet: error: {line}");
            ExitCode::from(commands::exit_code(&e))
        }
    }
}


fn main() -> ExitCode {
    run()
}
