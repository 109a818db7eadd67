//! Percentiles of a sample.

use serde::{Deserialize, Serialize};

/// A sample's size and percentiles (in the sample's unit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

/// The `q`-quantile (0..=1) of sorted values, linearly interpolated
/// between the closest ranks (Hyndman & Fan type 7, as numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

/// Summarizes `values` (any order).
pub fn summary(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary::default();
    }
    Summary {
        n: v.len(),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p50: quantile(&v, 0.50),
        p99: quantile(&v, 0.99),
        max: v[v.len() - 1],
    }
}

/// The median of `values` (any order); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    summary(values).p50
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summary(&v);
        assert_eq!(s.n, 100);
        assert!((s.p50 - 50.5).abs() < 1e-9);
        assert!((s.p99 - 99.01).abs() < 1e-9);
        assert_eq!(s.max, 100.0);
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(summary(&[]).n, 0);
        assert_eq!(summary(&[3.0]).p99, 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }
}
