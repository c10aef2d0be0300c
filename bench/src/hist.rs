//! A small log-linear histogram of microsecond values (relative error under 1%), cheap to
//! record into and to merge. Readers record into a local buffer and merge per batch, so the
//! shared histogram's lock is taken once per few hundred samples.

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Values up to 2^40 µs (12 days) are kept exactly enough; larger ones land in the last bucket.
const GROUPS: usize = 40 - SUB_BITS as usize + 1;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; SUB * GROUPS],
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let bits = 64 - v.leading_zeros(); // > SUB_BITS
    let group = (bits - SUB_BITS) as usize;
    let sub = (v >> (bits - SUB_BITS)) as usize & (SUB - 1);
    // Group g >= 1 covers [2^(g+SUB_BITS-1), 2^(g+SUB_BITS)) with SUB/2 distinct leading values;
    // keep it simple: the top SUB_BITS bits index within the group.
    (group * SUB + sub).min(SUB * GROUPS - 1)
}

/// The lowest value of bucket `i` (the value reported for it).
fn value_of(i: usize) -> u64 {
    let (group, sub) = (i / SUB, (i % SUB) as u64);
    if group == 0 { sub } else { sub << group }
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn record_all(&mut self, values: &[u32]) {
        for &v in values {
            self.record(u64::from(v));
        }
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.quantile(0.0), 1);
    }
}
