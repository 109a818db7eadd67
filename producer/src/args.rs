//! What the commands' arguments share: value parsers for clap. Each
//! command's own arguments (`IssueArgs`, `ScheduleArgs`, `WatchArgs`, ...)
//! live with the command.

use std::time::Duration;

use certfleet_common::config;

/// Parses a `DURATION` argument (`30s`, `5m`, `1h30m`, `250ms`, `7d`) by
/// the same rules as the durations of the configuration.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    config::parse::parse_duration(s)
}
