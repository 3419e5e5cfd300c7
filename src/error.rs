//! How cnet fails: one line saying what failed and what to do (the kernel's reason
//! included), and an exit code that says whose fault it was. The ground floor: every layer
//! may fail this way.

/// Failures whose kind sets the exit code (everything else is the request's: 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The machine, not the request: not root, no kernel support (exit code 2).
    Environment,
    /// `up` was stopped by Ctrl-C (exit code 130, as shells report it).
    Interrupted,
    /// The user chose to stop (`q` at a `--step` prompt): not a failure (exit code 3).
    Stopped,
}

/// A one-line failure of a given kind.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn environment(message: impl Into<String>) -> anyhow::Error {
        Failure { kind: FailureKind::Environment, message: message.into() }.into()
    }
    pub fn interrupted(message: impl Into<String>) -> anyhow::Error {
        Failure { kind: FailureKind::Interrupted, message: message.into() }.into()
    }
    pub fn stopped(message: impl Into<String>) -> anyhow::Error {
        Failure { kind: FailureKind::Stopped, message: message.into() }.into()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for Failure {}

/// The kind of a failure: its own, or the machine's when the kernel's error says so.
pub fn kind(e: &anyhow::Error) -> Option<FailureKind> {
    match e.downcast_ref::<Failure>().map(|f| f.kind) {
        Some(k) => Some(k),
        None if is_environment(e) => Some(FailureKind::Environment),
        None => None,
    }
}

fn kind_of(e: &anyhow::Error) -> Option<FailureKind> {
    e.downcast_ref::<Failure>().map(|f| f.kind)
}

/// The exit code for a failed command: 130 interrupted, 3 stopped at the user's request,
/// 2 the machine's fault, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match kind_of(e) {
        Some(FailureKind::Interrupted) => 130,
        Some(FailureKind::Stopped) => 3,
        _ if is_environment(e) => 2,
        _ => 1,
    }
}

/// An error about the machine rather than the request: not root, no kernel support.
pub fn is_environment(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Failure>().is_some_and(|f| f.kind == FailureKind::Environment)
            || c.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()).is_some_and(|code| {
                [libc::EPERM, libc::EACCES, libc::EOPNOTSUPP, libc::EAFNOSUPPORT, libc::EPROTONOSUPPORT].contains(&code)
            })
    })
}

/// `message` as an error of the same kind as `cause` (the machine's fault or not), for
/// callers that fold a cause into one line of text: the exit code must survive that.
pub fn same_kind(cause: &anyhow::Error, message: String) -> anyhow::Error {
    if kind_of(cause) == Some(FailureKind::Interrupted) {
        Failure::interrupted(message)
    } else if kind_of(cause) == Some(FailureKind::Stopped) {
        Failure::stopped(message)
    } else if is_environment(cause) {
        Failure::environment(message)
    } else {
        anyhow::anyhow!(message)
    }
}

/// Several errors as one line, each with its causes.
pub fn join_errors(errors: &[anyhow::Error]) -> String {
    errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; ")
}
