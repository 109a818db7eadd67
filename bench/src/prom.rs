//! Reading the worker's `/metrics` (OpenMetrics text) — just enough to sum
//! counters by name and label.

use std::collections::BTreeMap;

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as exposed (`certfleet_s3_requests_total`).
    pub name: String,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(pub Vec<Sample>);

impl Scrape {
    /// Parses the text format; lines that are not samples are skipped.
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(parse_line).collect())
    }

    /// Sum of the samples named `name` whose labels include `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The samples named `name` summed per value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            if let Some((_, v)) = s.labels.iter().find(|(k, _)| k == label) {
                *out.entry(v.clone()).or_insert(0.0) += s.value;
            }
        }
        out
    }
}

/// Difference of two `by_label` maps (`after - before`).
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let sp = line.find(' ')?;
            (&line[..sp], Vec::new(), &line[sp..])
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let Some(end) = after.find('"') else {
            break;
        };
        out.push((key, after[..end].to_string()));
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP certfleet_s3_requests Object storage requests made by jobs.
# TYPE certfleet_s3_requests counter
certfleet_s3_requests_total{op="get"} 4
certfleet_s3_requests_total{op="put"} 6
certfleet_acme_client_requests_total{action="new_order",host="h",status="201"} 30
certfleet_acme_client_requests_total{action="order",host="h",status="400"} 2
certfleet_jobs_in_flight 7
certfleet_jobs_handled_total{kind="issue",outcome="stored"} 3 # {trace_id="x"} 1
# EOF
"#;

    #[test]
    fn sums_by_name_and_label() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("certfleet_s3_requests_total", &[]), 10.0);
        assert_eq!(s.sum("certfleet_s3_requests_total", &[("op", "put")]), 6.0);
        assert_eq!(s.sum("certfleet_acme_client_requests_total", &[]), 32.0);
        assert_eq!(s.sum("certfleet_jobs_in_flight", &[]), 7.0);
        assert_eq!(
            s.sum("certfleet_jobs_handled_total", &[("outcome", "stored")]),
            3.0
        );
        let by = s.by_label("certfleet_s3_requests_total", "op");
        assert_eq!(by.get("get"), Some(&4.0));
        let before = BTreeMap::from([("get".to_string(), 1.0)]);
        assert_eq!(delta(&before, &by).get("get"), Some(&3.0));
    }
}
