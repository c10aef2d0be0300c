//! Reading a `/metrics` page (Prometheus text format) in tests.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// One scrape: every sample line, by metric name with its labels.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// `(name, sorted labels) → value`.
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
    /// Names from the `# TYPE` lines, with their type.
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// Fetches `url` (e.g. `http://127.0.0.1:PORT/metrics`) and parses it.
    pub async fn fetch(url: &str) -> anyhow::Result<Self> {
        let resp = reqwest::get(url)
            .await
            .with_context(|| format!("GET {url}"))?;
        if !resp.status().is_success() {
            bail!("GET {url}: {}", resp.status());
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !content_type.starts_with("text/plain") {
            bail!("GET {url}: content type {content_type:?} is not the Prometheus text format");
        }
        Self::parse(&resp.text().await?)
    }

    /// Parses the Prometheus text format (the subset exporters write: no escaped quotes or
    /// commas inside label values).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut scrape = Scrape::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    scrape.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("sample line without a value: {line}"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().with_context(|| format!("bad value in {line}"))?,
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .with_context(|| format!("unclosed labels in {line}"))?;
                    let mut labels = Vec::new();
                    for pair in inner.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair
                            .split_once('=')
                            .with_context(|| format!("bad label in {line}"))?;
                        labels.push((k.to_owned(), v.trim_matches('"').to_owned()));
                    }
                    labels.sort();
                    (name.to_owned(), labels)
                }
            };
            scrape.samples.insert((name, labels), value);
        }
        Ok(scrape)
    }

    /// The value of the series `name` with exactly `labels`, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// The value of `name` with exactly `labels`, 0 when the series is absent (a counter or
    /// gauge not yet touched).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The type (`counter`, `gauge`, `histogram`, `summary`) of a metric family, if declared.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// Whether any series of the family `name` is present (`name`, `name_bucket`, …).
    pub fn has(&self, name: &str) -> bool {
        self.samples.keys().any(|(n, _)| {
            n == name
                || n.strip_prefix(name)
                    .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
        })
    }

    /// Adds another process's scrape to this one: the same series' values add up (counters and
    /// histogram buckets of several gateways, say).
    pub fn merge(&mut self, other: &Scrape) {
        for (key, value) in &other.samples {
            *self.samples.entry(key.clone()).or_default() += value;
        }
        for (name, kind) in &other.types {
            self.types
                .entry(name.clone())
                .or_insert_with(|| kind.clone());
        }
    }

    /// The `q` quantile (0-1) of what the histogram `name` (seconds) recorded between
    /// `earlier` and this scrape, summed over all its series: the upper bound of the bucket it
    /// falls in, or `None` when nothing was recorded. Also the number recorded.
    pub fn quantile_since(&self, earlier: &Scrape, name: &str, q: f64) -> Option<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for ((n, labels), value) in &self.samples {
            if *n != bucket {
                continue;
            }
            let Some(le) = labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.as_str())
            else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().ok()?
            };
            let before = earlier
                .samples
                .get(&(n.clone(), labels.clone()))
                .copied()
                .unwrap_or(0.0);
            let entry = by_le.entry(bound.to_bits()).or_insert((bound, 0.0));
            entry.1 += value - before;
        }
        let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map(|(bound, _)| (*bound, total))
    }

    /// Every metric family name declared by a `# TYPE` line.
    pub fn families(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_gauges_labels_and_histograms() {
        let text = "# HELP a_total things\n# TYPE a_total counter\na_total 3\n\
                    # TYPE b gauge\nb{x=\"1\",code=\"108\"} 2.5\n\
                    # TYPE h_seconds histogram\nh_seconds_bucket{le=\"+Inf\"} 4\nh_seconds_sum 0.5\nh_seconds_count 4\n";
        let s = Scrape::parse(text).unwrap();
        assert_eq!(s.get("a_total", &[]), Some(3.0));
        assert_eq!(s.get("b", &[("code", "108"), ("x", "1")]), Some(2.5));
        assert_eq!(s.value("b", &[]), 0.0);
        assert_eq!(s.get("h_seconds_bucket", &[("le", "+Inf")]), Some(4.0));
        assert!(s.has("h_seconds") && s.has("a_total") && !s.has("h"));
        assert_eq!(s.kind("h_seconds"), Some("histogram"));
        assert_eq!(s.families().count(), 3);
    }

    #[test]
    fn histogram_quantiles_come_from_the_bucket_deltas() {
        let at = |a: u32, b: u32, inf: u32| {
            Scrape::parse(&format!(
                "h_seconds_bucket{{op=\"x\",le=\"0.001\"}} {a}\nh_seconds_bucket{{op=\"x\",le=\"0.01\"}} {b}\nh_seconds_bucket{{op=\"x\",le=\"+Inf\"}} {inf}\n"
            ))
            .unwrap()
        };
        let before = at(10, 10, 10);
        // 100 more: 90 under 1 ms, 9 under 10 ms, 1 above.
        let after = at(100, 109, 110);
        assert_eq!(
            after.quantile_since(&before, "h_seconds", 0.5),
            Some((0.001, 100.0))
        );
        assert_eq!(
            after.quantile_since(&before, "h_seconds", 0.95),
            Some((0.01, 100.0))
        );
        assert_eq!(
            after.quantile_since(&before, "h_seconds", 1.0).map(|q| q.0),
            Some(f64::INFINITY)
        );
        assert_eq!(before.quantile_since(&before, "h_seconds", 0.5), None);
    }
}
