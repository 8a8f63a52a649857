//! What a benchmark sends.

use rand::rngs::SmallRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

/// A mix of operations.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Only SET.
    Set,
    /// Only GET.
    Get,
    /// YCSB A: 50% reads, 50% updates.
    A,
    /// YCSB B: 95% reads, 5% updates.
    B,
    /// YCSB C: reads only.
    C,
    /// YCSB F: 50% reads, 50% read-modify-write (INCR).
    F,
}

impl Mix {
    /// Fraction of reads.
    fn read_ratio(self) -> f64 {
        match self {
            Mix::Set => 0.0,
            Mix::Get | Mix::C => 1.0,
            Mix::A | Mix::F => 0.5,
            Mix::B => 0.95,
        }
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's zipfian (constant 0.99): a few keys are hot.
    Zipfian,
}

/// One request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// GET key
    Get(String),
    /// SET key value
    Set(String, Vec<u8>),
    /// INCR key
    Incr(String),
}

impl Op {
    /// The RESP encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use redraft_common::resp::Frame;
        let args = match self {
            Op::Get(k) => vec![Frame::bulk("GET"), Frame::bulk(k.as_bytes())],
            Op::Set(k, v) => vec![Frame::bulk("SET"), Frame::bulk(k.as_bytes()), Frame::bulk(v.clone())],
            Op::Incr(k) => vec![Frame::bulk("INCR"), Frame::bulk(k.as_bytes())],
        };
        Frame::Array(args).encode(out);
    }

    /// `get`, `set` or `incr`, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get(_) => "get",
            Op::Set(..) => "set",
            Op::Incr(_) => "incr",
        }
    }
}

/// A workload definition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workload {
    /// Operation mix.
    pub mix: Mix,
    /// Key choice.
    pub distribution: KeyDistribution,
    /// Number of distinct keys.
    pub keys: u64,
    /// Value size in bytes.
    pub value_size: usize,
}

/// Generates operations of a workload.
pub struct Generator {
    workload: Workload,
    zipf: Option<Zipf<f64>>,
    value: Vec<u8>,
}

impl Generator {
    /// A generator for `workload`.
    pub fn new(workload: Workload) -> Generator {
        let zipf = (workload.distribution == KeyDistribution::Zipfian)
            .then(|| Zipf::new(workload.keys.max(1), 0.99).expect("valid zipf parameters"));
        let value = vec![b'x'; workload.value_size];
        Generator { workload, zipf, value }
    }

    /// The key with index `i`.
    pub fn key(i: u64) -> String {
        format!("key:{i:012}")
    }

    /// The next operation.
    pub fn next(&self, rng: &mut SmallRng) -> Op {
        let index = match &self.zipf {
            // Zipf yields 1..=n with 1 the most popular; scatter ranks over the key
            // space so hot keys do not all sit in one shard.
            Some(z) => (z.sample(rng) as u64 - 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.workload.keys,
            None => rng.gen_range(0..self.workload.keys.max(1)),
        };
        let key = Self::key(index);
        if rng.gen_bool(self.workload.mix.read_ratio()) {
            Op::Get(key)
        } else if self.workload.mix == Mix::F {
            Op::Incr(format!("counter:{index:012}"))
        } else {
            Op::Set(key, self.value.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn ops(mix: Mix, distribution: KeyDistribution) -> Vec<Op> {
        let g = Generator::new(Workload {
            mix,
            distribution,
            keys: 1000,
            value_size: 8,
        });
        let mut rng = SmallRng::seed_from_u64(7);
        (0..10_000).map(|_| g.next(&mut rng)).collect()
    }

    #[test]
    fn mixes_have_their_read_ratio() {
        let reads = |m| {
            ops(m, KeyDistribution::Uniform)
                .iter()
                .filter(|o| matches!(o, Op::Get(_)))
                .count()
        };
        assert_eq!(reads(Mix::Set), 0);
        assert_eq!(reads(Mix::C), 10_000);
        assert!((4_500..5_500).contains(&reads(Mix::A)));
        assert!((9_300..9_700).contains(&reads(Mix::B)));
        assert!(ops(Mix::F, KeyDistribution::Uniform)
            .iter()
            .any(|o| matches!(o, Op::Incr(_))));
    }

    #[test]
    fn zipfian_keys_are_skewed_and_uniform_are_not() {
        let top = |d| {
            let mut counts = std::collections::HashMap::new();
            for op in ops(Mix::C, d) {
                *counts.entry(format!("{op:?}")).or_insert(0) += 1;
            }
            counts.into_values().max().unwrap()
        };
        assert!(top(KeyDistribution::Zipfian) > 500, "the hottest zipfian key is hot");
        assert!(top(KeyDistribution::Uniform) < 50);
    }
}
