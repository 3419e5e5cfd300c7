//! How cnet speaks on a terminal: plan steps as the talk's script showed them, and the
//! settings every cnet process shares (verbosity, colour), passed on to the cnet processes
//! it starts inside lab nodes.

use std::sync::OnceLock;

/// This process's `-v` count, colour choice and line width, set once by main.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    pub verbose: u8,
    pub color: bool,
    /// Columns to wrap text at: the terminal's, else `COLUMNS`, else 80.
    pub width: usize,
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
    // A node runner's stdout is this terminal, but it cannot ask it: tell it the width.
    a.extend(["--width".to_string(), width().to_string()]);
    a
}

/// The width to wrap at (at least 40, so that a narrow terminal still reads).
pub fn width() -> usize {
    match settings().width {
        0 => 80,
        w => w.max(40),
    }
}

/// `text` wrapped at the width: the first line after `first`, the others after `indent`.
pub fn wrap(first: &str, indent: &str, text: &str) -> String {
    let width = width();
    let mut out = String::from(first);
    let mut col = first.chars().count();
    let mut line_start = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let len = word.chars().count();
        if !line_start && col + 1 + len > width {
            out.push('\n');
            out.push_str(indent);
            col = indent.chars().count();
            line_start = true;
        }
        if !line_start {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += len;
        line_start = false;
    }
    out
}

/// A shell command wrapped at the width with `\` continuations, so that it can still be
/// copied and pasted as it is.
pub fn wrap_command(first: &str, indent: &str, command: &str) -> String {
    let width = width();
    let mut out = String::from(first);
    let mut col = first.chars().count();
    let mut line_start = true;
    for word in command.split(' ').filter(|w| !w.is_empty()) {
        let len = word.chars().count();
        // Room for " \" at the end of a broken line.
        if !line_start && col + 1 + len + 2 > width {
            out.push_str(" \\\n");
            out.push_str(indent);
            col = indent.chars().count();
            line_start = true;
        }
        if !line_start {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += len;
        line_start = false;
    }
    out
}

/// One step: `[i/total] why`, then the command it equals, indented under it; both wrapped
/// at the width.
pub fn print_step(i: usize, total: usize, why: &str, command: &str) {
    let w = total.to_string().len();
    let head = format!("[{:>w$}/{total}] ", i + 1);
    let indent = " ".repeat(head.chars().count());
    say!("{}", wrap(&head, &indent, why));
    say!("{}", wrap_command(&format!("{indent}$ "), &format!("{indent}    "), command));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_the_width_and_keeps_commands_pasteable() {
        init(Settings { width: 40, ..Settings::default() });
        let w = wrap("[1/9] ", "      ", "Create the veth pair veth10/veth11 with veth11 straight inside con1.");
        assert!(w.lines().all(|l| l.chars().count() <= 40), "{w}");
        assert!(w.lines().skip(1).all(|l| l.starts_with("      ")), "{w}");
        let c =
            wrap_command("  $ ", "      ", "cnet tunnel --dev tun0 --local 10.0.0.10:9000 --peer 10.0.0.20:9000=172.16.1.0/24 &");
        assert!(c.lines().all(|l| l.chars().count() <= 40), "{c}");
        assert_eq!(
            c.replace(" \\\n", " ").split_whitespace().collect::<Vec<_>>().join(" "),
            "$ cnet tunnel --dev tun0 --local 10.0.0.10:9000 --peer 10.0.0.20:9000=172.16.1.0/24 &"
        );
    }
}
