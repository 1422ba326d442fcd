//! What to send next: a seeded generator of (command, key) pairs, independent of any I/O.
//!
//! Each connection owns one [`Workload`], seeded from the run's seed, the phase and the
//! connection's index, so the sequence of operations a connection sends is the same on every
//! run with the same seed (how the connections interleave at the server depends on timing).

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;
use serde::Serialize;

/// Bytes of every key: `key:` and twelve decimal digits, as redis-benchmark's
/// `key:__rand_int__`.
pub const KEY_LEN: usize = 16;

/// The largest key space that [`write_key`] can spell in twelve digits.
pub const MAX_KEYSPACE: u64 = 1_000_000_000_000;

/// Writes key number `key` as `key:000000000042`.
pub fn write_key(out: &mut [u8; KEY_LEN], key: u64) {
    out[..4].copy_from_slice(b"key:");
    let mut rest = key;
    for digit in out[4..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// A command the load tool sends. Named as Tandem names them; over RESP, PUT is `SET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Cmd {
    /// Write the whole value.
    Put,
    /// Read the value.
    Get,
    /// Append the value.
    Append,
}

impl Cmd {
    /// Every command, in the order of their [`Cmd::index`].
    pub const ALL: [Cmd; 3] = [Cmd::Put, Cmd::Get, Cmd::Append];

    /// Position in [`Cmd::ALL`] and in per-command arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// `PUT`, `GET` or `APPEND`.
    pub const fn name(self) -> &'static str {
        match self {
            Cmd::Put => "PUT",
            Cmd::Get => "GET",
            Cmd::Append => "APPEND",
        }
    }

    /// Whether the command sends the value.
    pub const fn carries_value(self) -> bool {
        !matches!(self, Cmd::Get)
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the commands in a test, indexed by [`Cmd::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Weight of PUT.
    pub put: u32,
    /// Weight of GET.
    pub get: u32,
    /// Weight of APPEND.
    pub append: u32,
}

impl Mix {
    /// A test of one command only.
    pub const fn only(cmd: Cmd) -> Mix {
        match cmd {
            Cmd::Put => Mix { put: 1, get: 0, append: 0 },
            Cmd::Get => Mix { put: 0, get: 1, append: 0 },
            Cmd::Append => Mix { put: 0, get: 0, append: 1 },
        }
    }

    /// The weights as an array indexed by [`Cmd::index`].
    pub const fn weights(&self) -> [u32; 3] {
        [self.put, self.get, self.append]
    }

    /// The commands with a non-zero weight.
    pub fn commands(&self) -> impl Iterator<Item = Cmd> + '_ {
        Cmd::ALL.into_iter().filter(|c| self.weights()[c.index()] > 0)
    }
}

/// How keys are drawn from the key space `0..n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Each connection walks the key space in order, connection `g` of `c` taking keys
    /// `g, g + c, g + 2c, ...` and wrapping around.
    Sequential,
    /// Zipfian with exponent `theta` > 0: a few keys take most of the load, as in YCSB
    /// (whose default is 0.99). Popular keys are scattered over the key space.
    Zipf(f64),
}

/// YCSB's default Zipfian constant.
pub const DEFAULT_ZIPF_THETA: f64 = 0.99;

impl FromStr for KeyDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(KeyDist::Uniform),
            "sequential" => Ok(KeyDist::Sequential),
            "zipf" => Ok(KeyDist::Zipf(DEFAULT_ZIPF_THETA)),
            _ => {
                let theta = s.strip_prefix("zipf:").ok_or_else(|| {
                    format!("unknown key distribution {s:?}: use uniform, sequential or zipf:THETA")
                })?;
                let theta: f64 =
                    theta.parse().map_err(|_| format!("zipf exponent {theta:?} is not a number"))?;
                if !(theta > 0.0 && theta.is_finite()) {
                    return Err(format!("zipf exponent {theta} must be positive"));
                }
                Ok(KeyDist::Zipf(theta))
            }
        }
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => f.write_str("uniform"),
            KeyDist::Sequential => f.write_str("sequential"),
            KeyDist::Zipf(theta) => write!(f, "zipf:{theta}"),
        }
    }
}

impl Serialize for KeyDist {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Zipfian ranks over `0..n`: rank `r` is drawn with probability proportional to
/// `1 / (r + 1)^theta`, exactly (rejection-inversion, Hörmann and Derflinger 1996, as
/// implemented by `rand_distr::Zipf`; YCSB's generator approximates ranks past the second).
/// Set-up and each draw take constant time, whatever the key space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Zipf {
    n: u64,
    dist: rand_distr::Zipf<f64>,
}

impl Zipf {
    /// A sampler over `0..n`.
    ///
    /// # Panics
    /// If `n` is 0 or `theta` is not positive and finite; configuration checks both.
    pub fn new(n: u64, theta: f64) -> Zipf {
        assert!(n > 0, "zipf over an empty key space");
        let dist = rand_distr::Zipf::new(n as f64, theta).expect("zipf exponent must be positive and finite");
        Zipf { n, dist }
    }

    /// Draws a rank.
    pub fn rank<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        // The distribution yields 1..=n as a float.
        let one_based = self.dist.sample(rng) as u64;
        one_based.saturating_sub(1).min(self.n - 1)
    }
}

/// A bijection of `0..n` that scatters Zipfian ranks over the key space, so that the
/// popular keys are not simply the first ones (YCSB's scrambled Zipfian hashes instead,
/// which merges some ranks; a permutation keeps the distribution exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scatter {
    n: u64,
    multiplier: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Scatter {
    fn new(n: u64) -> Scatter {
        let mut multiplier = (0x9E37_79B9_7F4A_7C15u64 % n).max(1);
        while gcd(multiplier, n) != 1 {
            multiplier += 1;
        }
        Scatter { n, multiplier }
    }

    fn apply(&self, rank: u64) -> u64 {
        ((u128::from(rank) * u128::from(self.multiplier) + 12_345) % u128::from(self.n)) as u64
    }
}

/// The shape of the keys and commands of one phase, shared by all its connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadSpec {
    /// Keys are `0..keyspace`.
    pub keyspace: u64,
    /// How keys are drawn.
    pub key_dist: KeyDist,
    /// Which commands, how often.
    pub mix: Mix,
    /// Whether each connection must keep to its own keys (for `--verify`: a GET then sees
    /// the last PUT of the same connection, which the server answered in order).
    pub partition: bool,
    /// Writes every key once, in order, then stops (the `--prefill` step).
    pub prefill: bool,
}

/// One operation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// The command.
    pub cmd: Cmd,
    /// The key's number, below the key space.
    pub key: u64,
}

#[derive(Debug, Clone, Copy)]
enum Sampler {
    Uniform,
    Sequential,
    Zipf(Zipf, Scatter),
}

/// Hands out the operations of one connection in one phase.
#[derive(Debug)]
pub struct Workload {
    keyspace: u64,
    sampler: Sampler,
    weights: [u32; 3],
    total_weight: u32,
    only: Option<Cmd>,
    rng: StdRng,
    /// This connection's index `g` and the number of connections `c`.
    slot: u64,
    slots: u64,
    next_seq: u64,
    partition: bool,
    prefill: bool,
}

/// Mixes the run's seed with the phase and connection numbers into one stream's seed
/// (SplitMix64's finaliser, so nearby inputs give unrelated streams).
pub fn stream_seed(seed: u64, phase: u64, conn: u64) -> u64 {
    let mut z = seed ^ phase.wrapping_mul(0xA24B_AED4_963E_E407) ^ conn.wrapping_mul(0x9FB2_1C65_1E98_DF25);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Workload {
    /// The workload of connection `slot` of `slots` (all threads counted), seeded by `seed`.
    pub fn new(spec: &WorkloadSpec, seed: u64, slot: u64, slots: u64) -> Workload {
        let sampler = match spec.key_dist {
            KeyDist::Uniform => Sampler::Uniform,
            KeyDist::Sequential => Sampler::Sequential,
            KeyDist::Zipf(theta) => {
                Sampler::Zipf(Zipf::new(spec.keyspace, theta), Scatter::new(spec.keyspace))
            }
        };
        let weights = spec.mix.weights();
        let mut commands = spec.mix.commands();
        let only = match (commands.next(), commands.next()) {
            (Some(cmd), None) => Some(cmd),
            _ => None,
        };
        Workload {
            keyspace: spec.keyspace,
            sampler,
            weights,
            total_weight: weights.iter().sum(),
            only,
            rng: StdRng::seed_from_u64(seed),
            slot,
            slots,
            next_seq: slot,
            partition: spec.partition,
            prefill: spec.prefill,
        }
    }

    /// The next operation, or `None` when a prefill has written all of its keys.
    pub fn next_op(&mut self) -> Option<Op> {
        if self.prefill {
            let key = self.next_seq;
            if key >= self.keyspace {
                return None;
            }
            self.next_seq += self.slots;
            return Some(Op { cmd: Cmd::Put, key });
        }
        let cmd = match self.only {
            Some(cmd) => cmd,
            None => {
                let mut draw = self.rng.random_range(0..self.total_weight);
                let mut chosen = Cmd::Get;
                for cmd in Cmd::ALL {
                    if draw < self.weights[cmd.index()] {
                        chosen = cmd;
                        break;
                    }
                    draw -= self.weights[cmd.index()];
                }
                chosen
            }
        };
        let key = match self.sampler {
            Sampler::Uniform => {
                let key = self.rng.random_range(0..self.keyspace);
                self.own(key)
            }
            Sampler::Zipf(zipf, scatter) => {
                let key = scatter.apply(zipf.rank(&mut self.rng));
                self.own(key)
            }
            Sampler::Sequential => {
                let key = self.next_seq;
                self.next_seq += self.slots;
                if self.next_seq >= self.keyspace {
                    self.next_seq = self.slot % self.keyspace;
                }
                key % self.keyspace
            }
        };
        Some(Op { cmd, key })
    }

    /// With partitioning, moves `key` to the nearest key this connection owns (keys `k` with
    /// `k % slots == slot`); needs `keyspace >= slots`, which configuration checks.
    fn own(&self, key: u64) -> u64 {
        if !self.partition {
            return key;
        }
        let owned = key - key % self.slots + self.slot;
        if owned >= self.keyspace {
            owned - self.slots
        } else {
            owned
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key_dist: KeyDist, mix: Mix) -> WorkloadSpec {
        WorkloadSpec { keyspace: 1000, key_dist, mix, partition: false, prefill: false }
    }

    #[test]
    fn keys_are_fixed_width_decimal() {
        let mut key = [0u8; KEY_LEN];
        write_key(&mut key, 42);
        assert_eq!(&key, b"key:000000000042");
        write_key(&mut key, MAX_KEYSPACE - 1);
        assert_eq!(&key, b"key:999999999999");
    }

    #[test]
    fn key_dist_parses_and_prints() {
        assert_eq!("uniform".parse(), Ok(KeyDist::Uniform));
        assert_eq!("sequential".parse(), Ok(KeyDist::Sequential));
        assert_eq!("zipf".parse(), Ok(KeyDist::Zipf(0.99)));
        assert_eq!("zipf:0.5".parse(), Ok(KeyDist::Zipf(0.5)));
        assert_eq!(KeyDist::Zipf(0.5).to_string(), "zipf:0.5");
        assert_eq!("zipf:1.2".parse(), Ok(KeyDist::Zipf(1.2)));
        for bad in ["zipf:0", "zipf:-1", "zipf:x", "zipf:inf", "gauss"] {
            assert!(bad.parse::<KeyDist>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn same_seed_same_sequence_other_seed_other_sequence() {
        let s = spec(KeyDist::Zipf(0.99), Mix { put: 1, get: 1, append: 0 });
        let ops = |seed| {
            let mut w = Workload::new(&s, seed, 0, 1);
            (0..100).map(|_| w.next_op().expect("endless")).collect::<Vec<_>>()
        };
        assert_eq!(ops(7), ops(7));
        assert_ne!(ops(7), ops(8));
        assert_ne!(stream_seed(1, 0, 0), stream_seed(1, 0, 1));
        assert_ne!(stream_seed(1, 0, 0), stream_seed(1, 1, 0));
    }

    #[test]
    fn mix_follows_the_weights() {
        let s = spec(KeyDist::Uniform, Mix { put: 1, get: 3, append: 0 });
        let mut w = Workload::new(&s, 1, 0, 1);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[w.next_op().expect("endless").cmd.index()] += 1;
        }
        assert_eq!(counts[Cmd::Append.index()], 0);
        let put_share = f64::from(counts[Cmd::Put.index()]) / 40_000.0;
        assert!((put_share - 0.25).abs() < 0.01, "PUT share {put_share}");
    }

    #[test]
    fn uniform_covers_the_key_space_evenly() {
        let s = spec(KeyDist::Uniform, Mix::only(Cmd::Get));
        let mut w = Workload::new(&s, 3, 0, 1);
        let mut hits = vec![0u32; 1000];
        for _ in 0..200_000 {
            hits[w.next_op().expect("endless").key as usize] += 1;
        }
        let (min, max) = (hits.iter().min().copied(), hits.iter().max().copied());
        assert!(min > Some(130) && max < Some(280), "uniform spread {min:?}..{max:?} around 200");
    }

    #[test]
    fn sequential_interleaves_connections_and_wraps() {
        let s = WorkloadSpec { keyspace: 10, ..spec(KeyDist::Sequential, Mix::only(Cmd::Put)) };
        let mut w = Workload::new(&s, 1, 1, 3);
        let keys: Vec<u64> = (0..5).map(|_| w.next_op().expect("endless").key).collect();
        assert_eq!(keys, [1, 4, 7, 1, 4]);
    }

    #[test]
    fn prefill_writes_each_owned_key_once_then_stops() {
        let s = WorkloadSpec { keyspace: 10, prefill: true, ..spec(KeyDist::Uniform, Mix::only(Cmd::Put)) };
        let mut all = Vec::new();
        for slot in 0..3 {
            let mut w = Workload::new(&s, 1, slot, 3);
            while let Some(op) = w.next_op() {
                assert_eq!(op.cmd, Cmd::Put);
                all.push(op.key);
            }
        }
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn partitioned_connections_only_touch_their_own_keys() {
        let s =
            WorkloadSpec { keyspace: 103, partition: true, ..spec(KeyDist::Zipf(0.9), Mix::only(Cmd::Get)) };
        for slot in 0..7 {
            let mut w = Workload::new(&s, 5, slot, 7);
            for _ in 0..2000 {
                let key = w.next_op().expect("endless").key;
                assert!(key < 103 && key % 7 == slot, "slot {slot} drew key {key}");
            }
        }
    }

    fn zeta(n: u64, theta: f64) -> f64 {
        (1..=n).map(|i| (i as f64).powf(-theta)).sum()
    }

    /// The sampler against the exact Zipf probabilities, seeded: the hottest ranks get their
    /// share and the top 1% of a million keys gets what theory says it should.
    #[test]
    fn zipf_matches_the_distribution() {
        let n = 1_000_000u64;
        for theta in [0.99, 0.5, 1.2] {
            let zipf = Zipf::new(n, theta);
            let mut rng = StdRng::seed_from_u64(42);
            let draws = 400_000;
            let mut top = [0u64; 4];
            let mut top_percent = 0u64;
            for _ in 0..draws {
                let rank = zipf.rank(&mut rng);
                assert!(rank < n);
                if rank < 4 {
                    top[rank as usize] += 1;
                }
                if rank < n / 100 {
                    top_percent += 1;
                }
            }
            let zeta_n = zeta(n, theta);
            for (rank, &count) in top.iter().enumerate() {
                let expected = ((rank + 1) as f64).powf(-theta) / zeta_n;
                let seen = count as f64 / draws as f64;
                // Four standard deviations of a binomial count.
                let tolerance = 4.0 * (expected * (1.0 - expected) / draws as f64).sqrt();
                assert!(
                    (seen - expected).abs() < tolerance,
                    "theta {theta} rank {rank}: {seen} vs {expected}"
                );
            }
            let expected_top = zeta(n / 100, theta) / zeta_n;
            let seen_top = top_percent as f64 / draws as f64;
            assert!(
                (seen_top - expected_top).abs() < 0.005,
                "theta {theta} top 1%: {seen_top} vs {expected_top}"
            );
        }
    }

    #[test]
    fn scatter_is_a_permutation() {
        for n in [1u64, 2, 10, 97, 1000, 4096] {
            let scatter = Scatter::new(n);
            let mut seen = vec![false; n as usize];
            for rank in 0..n {
                let key = scatter.apply(rank) as usize;
                assert!(!seen[key], "n {n}: key {key} twice");
                seen[key] = true;
            }
        }
    }

    #[test]
    fn tiny_key_spaces_work() {
        for dist in [KeyDist::Uniform, KeyDist::Sequential, KeyDist::Zipf(0.99)] {
            let s = WorkloadSpec { keyspace: 1, ..spec(dist, Mix::only(Cmd::Get)) };
            let mut w = Workload::new(&s, 1, 0, 1);
            for _ in 0..10 {
                assert_eq!(w.next_op().map(|op| op.key), Some(0));
            }
        }
    }
}
