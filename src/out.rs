//! How cnet speaks on a terminal: plan steps as the talk's script showed them, and the
//! settings every cnet process shares (verbosity, colour), passed on to the cnet processes
//! it starts inside lab nodes.

use std::sync::OnceLock;

/// This process's `-v` count and colour choice, set once by main.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    pub verbose: u8,
    pub color: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

pub fn init(s: Settings) {
    let _ = SETTINGS.set(s);
}

pub fn settings() -> Settings {
    SETTINGS.get().copied().unwrap_or_default()
}

/// The arguments that give a cnet started by this one the same settings.
pub fn passed_on() -> Vec<String> {
    let s = settings();
    let mut a: Vec<String> = (0..s.verbose).map(|_| "-v".to_string()).collect();
    a.extend(["--color".to_string(), if s.color { "always" } else { "never" }.to_string()]);
    a
}

/// One step: `[i/total] why`, then the command it equals, indented under it.
pub fn print_step(i: usize, total: usize, why: &str, command: &str) {
    let w = total.to_string().len();
    say!("[{:>w$}/{total}] {why}", i + 1);
    say!("{:w$}    $ {command}", "", w = 2 * w + 1);
}

/// `text` in green (good) or red (bad) when colour is on, as it is.
pub fn verdict(text: &str, good: bool) -> String {
    use clap::builder::styling::{AnsiColor, Style};
    if !settings().color {
        return text.to_string();
    }
    let style = Style::new().fg_color(Some(if good { AnsiColor::Green } else { AnsiColor::Red }.into())).bold();
    format!("{}{text}{}", style.render(), style.render_reset())
}
