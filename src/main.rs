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

// From the ground up: each layer uses only those listed before it.
mod apply;
mod checksum;
mod cli;
mod cni;
mod commands;
mod error;
mod model;
mod observe;
mod out;
mod run;
mod sys;
// nftables over netlink: a protocol library, like sys, that knows nothing of cnet.
mod nft;
mod tunnel;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// Exit codes: 0 done, 1 failed (or a check failed), 2 the machine cannot do it (no root,
/// no kernel support).
fn run() -> ExitCode {
    // Run by a container runtime as its CNI plugin (`/opt/cni/bin/cnet`): no arguments,
    // CNI_COMMAND set; the spec, not the command line, says what to do and how to answer.
    if cni::invoked_as_plugin() {
        return cni::plugin_main();
    }
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
    if !matches!(cli.command, Command::Up(_) | Command::Down(_) | Command::Tunnel(_) | Command::Hold | Command::Serve(_)) {
        sys::signal::default_sigpipe();
    }
    // A report channel from the cnet that started us (in a lab node): taken first, so that
    // nothing we start inherits it.
    let mut report = match cli.report_fd.map(sys::ns::take_report_channel).transpose() {
        Ok(r) => r,
        Err(e) => {
            tell!("cnet: error: cannot take the report channel: {e}");
            return ExitCode::from(1);
        }
    };
    let color = match cli.color {
        cli::ColorChoice::Always => true,
        cli::ColorChoice::Never => false,
        cli::ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::IsTerminal::is_terminal(&std::io::stdout())
        }
    };
    let width = cli.width.or_else(sys::terminal_width).or_else(|| std::env::var("COLUMNS").ok()?.parse().ok()).unwrap_or(80);
    out::init(out::Settings { verbose: cli.verbose, color, width });
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CNET_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(|| QuietStderr)
        // Colour codes only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(color && std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Trace(a) => match commands::trace(a) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::TraceHop(a) => crate::observe::trace::hop_command(&a.query),
        Command::Tunnel(a) => commands::tunnel(a),
        Command::Hold => commands::hold(),
        Command::Break(a) => commands::break_(a),
        Command::BreakHere(a) => commands::break_here(a),
        Command::Serve(a) => run::serve::run(&a.name, a.listen),
        Command::Completions(a) => commands::completions(a),
        Command::Man => commands::man(),
        Command::BpfObject => commands::bpf_object(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // To the cnet that started us, as data (it says where it happened); else one line.
            let reported = report.as_mut().is_some_and(|r| run::enter::report_failure(r, &e).is_ok());
            if !reported {
                tell!("cnet: error: {e:#}");
            }
            ExitCode::from(error::exit_code(&e))
        }
    }
}

/// stderr for log lines, where a closed stderr is not an error: tracing-subscriber reports
/// a failed write with `eprintln!`, which panics on a closed pipe (`cnet up 2>&1 | head`).
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> ExitCode {
    run()
}
