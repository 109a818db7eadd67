//! What the commands print on stdout: the results scripts read (job ids,
//! tables, reports), one line at a time. Progress and diagnostics go to
//! stderr (`eprintln!` for the user, `tracing` for logs).

/// Writes one line on stdout. A closed stdout (`certfleet ... | head`)
/// is not an error worth a panic.
pub(crate) fn out(line: impl std::fmt::Display) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
