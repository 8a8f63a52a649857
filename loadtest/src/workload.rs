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
    /// SETBIT at a random offset below 100,000 of one of the keys.
    Setbit,
    /// BITCOUNT of one of the keys (fill them with `setbit` first).
    Bitcount,
    /// PFADD of a random element to one of the keys.
    Pfadd,
    /// PFCOUNT of one of the keys (fill them with `pfadd` first).
    Pfcount,
    /// GEOADD of a random point (longitude 0..10, latitude 40..50) to one of
    /// the keys.
    Geoadd,
    /// GEOSEARCH of one of the keys: the 10 nearest points within 50 km of a
    /// random centre (fill them with `geoadd` first).
    Geosearch,
}

impl Mix {
    /// Fraction of reads.
    fn read_ratio(self) -> f64 {
        match self {
            Mix::Set => 0.0,
            Mix::Get | Mix::C => 1.0,
            Mix::A | Mix::F => 0.5,
            Mix::B => 0.95,
            _ => 0.0,
        }
    }

    /// Whether this mix exercises one data type (not strings' GET and SET).
    fn is_typed(self) -> bool {
        matches!(
            self,
            Mix::Setbit | Mix::Bitcount | Mix::Pfadd | Mix::Pfcount | Mix::Geoadd | Mix::Geosearch
        )
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
    /// Any other command: its name (for reports) and its arguments.
    Command(&'static str, Vec<Vec<u8>>),
}

impl Op {
    /// The RESP encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use redraft_common::resp::Frame;
        let args = match self {
            Op::Get(k) => vec![Frame::bulk("GET"), Frame::bulk(k.as_bytes())],
            Op::Set(k, v) => vec![Frame::bulk("SET"), Frame::bulk(k.as_bytes()), Frame::bulk(v.clone())],
            Op::Incr(k) => vec![Frame::bulk("INCR"), Frame::bulk(k.as_bytes())],
            Op::Command(_, args) => args.iter().map(|a| Frame::bulk(a.clone())).collect(),
        };
        Frame::Array(args).encode(out);
    }

    /// `get`, `set` or `incr`, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get(_) => "get",
            Op::Set(..) => "set",
            Op::Incr(_) => "incr",
            Op::Command(name, _) => name,
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
        if self.workload.mix.is_typed() {
            return typed(self.workload.mix, index, rng);
        }
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

/// An operation of a one-type mix on the key with index `index`.
fn typed(mix: Mix, index: u64, rng: &mut SmallRng) -> Op {
    let text = |s: String| s.into_bytes();
    let (name, args): (&'static str, Vec<String>) = match mix {
        Mix::Setbit => (
            "setbit",
            vec![
                "SETBIT".into(),
                format!("bits:{index}"),
                rng.gen_range(0..100_000u32).to_string(),
                "1".into(),
            ],
        ),
        Mix::Bitcount => ("bitcount", vec!["BITCOUNT".into(), format!("bits:{index}")]),
        Mix::Pfadd => (
            "pfadd",
            vec![
                "PFADD".into(),
                format!("hll:{index}"),
                format!("element:{}", rng.gen::<u32>()),
            ],
        ),
        Mix::Pfcount => ("pfcount", vec!["PFCOUNT".into(), format!("hll:{index}")]),
        Mix::Geoadd => (
            "geoadd",
            vec![
                "GEOADD".into(),
                format!("geo:{index}"),
                format!("{:.6}", rng.gen_range(0.0..10.0)),
                format!("{:.6}", rng.gen_range(40.0..50.0)),
                format!("place:{}", rng.gen::<u32>()),
            ],
        ),
        _ => (
            "geosearch",
            vec![
                "GEOSEARCH".into(),
                format!("geo:{index}"),
                "FROMLONLAT".into(),
                format!("{:.6}", rng.gen_range(0.0..10.0)),
                format!("{:.6}", rng.gen_range(40.0..50.0)),
                "BYRADIUS".into(),
                "50".into(),
                "km".into(),
                "COUNT".into(),
                "10".into(),
            ],
        ),
    };
    Op::Command(name, args.into_iter().map(text).collect())
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
    fn typed_mixes_send_their_command_to_their_keys() {
        for (mix, command, prefix) in [
            (Mix::Setbit, "SETBIT", "bits:"),
            (Mix::Bitcount, "BITCOUNT", "bits:"),
            (Mix::Pfadd, "PFADD", "hll:"),
            (Mix::Pfcount, "PFCOUNT", "hll:"),
            (Mix::Geoadd, "GEOADD", "geo:"),
            (Mix::Geosearch, "GEOSEARCH", "geo:"),
        ] {
            for op in ops(mix, KeyDistribution::Uniform).into_iter().take(100) {
                let Op::Command(name, args) = &op else {
                    panic!("{mix:?} sent {op:?}");
                };
                assert_eq!(name.to_uppercase(), command);
                assert_eq!(args[0], command.as_bytes());
                assert!(args[1].starts_with(prefix.as_bytes()));
                let mut encoded = Vec::new();
                op.encode(&mut encoded);
                assert!(encoded.starts_with(format!("*{}\r\n", args.len()).as_bytes()));
            }
        }
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
