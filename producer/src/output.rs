//! What the commands print on stdout: the results scripts read (job ids,
//! tables, reports), one line at a time. Progress and diagnostics go to
//! stderr (`eprintln!` for the user, `tracing` for logs).

/// Writes `text` into a new file only its owner can read (0600), never
/// over an existing one: identities, a server's credentials.
///
/// # Errors
/// The file exists or cannot be written.
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Writes one line on stdout. A closed stdout (`certfleet ... | head`)
/// is not an error worth a panic.
pub(crate) fn out(line: impl std::fmt::Display) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
