//! When to renew: a pure function of the certificate's dates, the CA's
//! advice and an explicit `now` (certmagic's `currentlyInRenewalWindow`).

use time::{Duration, OffsetDateTime};

/// Lifetimes up to this long renew at half of their lifetime instead of at
/// two thirds: a 6-day certificate then still has 3 days of margin.
pub const SHORT_LIFETIME: Duration = Duration::days(10);

/// The CA's suggested renewal window (ARI, RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start.
    pub start: OffsetDateTime,
    /// End.
    pub end: OffsetDateTime,
}

/// When a certificate should be renewed.
///
/// With an ARI window: a point inside it chosen by `jitter` (uniform in
/// `[0, 1)`), so a fleet spreads its renewals instead of stampeding; a
/// window that is empty or reversed yields its start. Without: when a third
/// of the lifetime remains, or half for lifetimes of [`SHORT_LIFETIME`] or
/// less. Never later than `not_after` (or the window's end), whatever the
/// dates: they come from the CA.
pub fn renewal_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ari: Option<Window>,
    jitter: f64,
) -> OffsetDateTime {
    if let Some(w) = ari {
        if w.end <= w.start {
            return w.start;
        }
        let span = (w.end - w.start).as_seconds_f64();
        let j = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // Checked: the window is the CA's word (a far-future end must not
        // overflow, nor rounding step past it).
        return Duration::checked_seconds_f64(span * j)
            .and_then(|offset| w.start.checked_add(offset))
            .map_or(w.end, |t| t.min(w.end));
    }
    let lifetime = not_after - not_before;
    let remaining = if lifetime <= SHORT_LIFETIME {
        lifetime / 2
    } else {
        lifetime / 3
    };
    // Dates from the certificate the CA sent: never past its expiry, even
    // if they are reversed, and never an overflow.
    not_after
        .checked_sub(remaining)
        .map_or(not_after, |t| t.min(not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn ninety_day_renews_with_thirty_days_left() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = nb + Duration::days(90);
        assert_eq!(renewal_time(nb, na, None, 0.5), na - Duration::days(30));
    }

    #[test]
    fn six_day_renews_at_half() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = nb + Duration::days(6);
        assert_eq!(renewal_time(nb, na, None, 0.0), nb + Duration::days(3));
        let ten = nb + Duration::days(10);
        assert_eq!(renewal_time(nb, ten, None, 0.0), nb + Duration::days(5));
        let eleven = nb + Duration::days(11);
        assert!(renewal_time(nb, eleven, None, 0.0) > nb + Duration::days(7));
    }

    #[test]
    fn ari_window_wins_and_jitters_inside() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        let na = nb + Duration::days(90);
        let w = Window {
            start: datetime!(2026-02-01 00:00 UTC),
            end: datetime!(2026-02-03 00:00 UTC),
        };
        assert_eq!(renewal_time(nb, na, Some(w), 0.0), w.start);
        assert_eq!(
            renewal_time(nb, na, Some(w), 0.5),
            datetime!(2026-02-02 00:00 UTC)
        );
        for j in [0.0, 0.1, 0.99, 5.0, -1.0, f64::NAN] {
            let t = renewal_time(nb, na, Some(w), j);
            assert!(t >= w.start && t <= w.end, "{j} gave {t}");
        }
        let reversed = Window {
            start: w.end,
            end: w.start,
        };
        assert_eq!(renewal_time(nb, na, Some(reversed), 0.7), w.end);
    }

    /// Whatever dates the CA sends, the rule answers without panicking and
    /// never later than the expiry (or the window's end).
    #[test]
    fn extreme_dates_never_panic() {
        let (min, max) = (
            datetime!(-9999-01-01 00:00 UTC),
            datetime!(+9999-12-31 23:59:59.999999999 UTC),
        );
        assert_eq!(renewal_time(max, min, None, 0.5), min, "reversed lifetime");
        assert!(renewal_time(min, max, None, 0.5) <= max);
        let w = Window {
            start: min,
            end: max,
        };
        for j in [0.0, 0.5, 1.0] {
            let t = renewal_time(min, max, Some(w), j);
            assert!(t >= min && t <= max, "{j} gave {t}");
        }
    }
}
