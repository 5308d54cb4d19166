//! Server selection, one [`Balancer`] per upstream per worker.
//!
//! A balancer is built for a fixed list of endpoints (rebuilt when DNS
//! changes the list) and picks among those the caller says are usable
//! (healthy, not ejected, not tried yet by this request). Its state is
//! `Cell`s: one worker thread, no locks.
//!
//! - round-robin: a cursor.
//! - weighted-round-robin: nginx's smooth WRR. Each pick adds every usable
//!   endpoint's weight to its `current`, takes the largest, and subtracts
//!   the total from it: over any window of sum(weights) consecutive picks
//!   with a stable usable set, endpoint `i` is picked exactly `weight[i]`
//!   times, interleaved (5,1,1 gives a a b a c a a, not a a a a a b c).
//! - least-conn: fewest in flight on this worker; ties go round-robin.
//! - p2c: two distinct endpoints at random (xorshift, seeded per worker),
//!   the one with fewer in flight.
//! - consistent-hash: a ring of `VNODES` points per unit of weight, each
//!   point hashed from the endpoint's address, so a key maps to the same
//!   address on every worker and every run, and removing an endpoint moves
//!   only the keys that were on it. An unusable endpoint's keys go to the
//!   next usable point clockwise.

use std::cell::Cell;

use super::Balance;

/// Ring points per unit of weight.
const VNODES: u32 = 160;
/// Weights above this count as this on the ring (bounds its size).
const MAX_RING_WEIGHT: u32 = 64;

/// What a balancer needs to know of an endpoint when it is built.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Weight (0: never picked by weighted algorithms).
    pub weight: u32,
    /// Stable identity (hash of the address) for the hash ring.
    pub id: u64,
}

#[derive(Debug)]
enum Kind {
    RoundRobin,
    Weighted {
        weights: Vec<i64>,
        current: Vec<Cell<i64>>,
    },
    LeastConn,
    P2c,
    Ring {
        points: Vec<(u64, u32)>,
    },
}

/// Per-worker selection state for one upstream's endpoints.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    n: usize,
    cursor: Cell<usize>,
    rng: Cell<u64>,
}

impl Balancer {
    /// A balancer of `balance` over `endpoints`; `seed` varies p2c's and
    /// round-robin's starting point between workers.
    pub fn new(balance: &Balance, endpoints: &[Candidate], seed: u64) -> Self {
        let n = endpoints.len();
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin,
            Balance::WeightedRoundRobin => Kind::Weighted {
                weights: endpoints.iter().map(|e| i64::from(e.weight)).collect(),
                current: endpoints.iter().map(|_| Cell::new(0)).collect(),
            },
            Balance::LeastConn => Kind::LeastConn,
            Balance::P2c => Kind::P2c,
            Balance::ConsistentHash(_) => Kind::Ring {
                points: ring(endpoints),
            },
        };
        let seed = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
        Balancer {
            kind,
            n,
            cursor: Cell::new(usize::try_from(seed % (n.max(1) as u64)).unwrap_or(0)),
            rng: Cell::new(seed | 1),
        }
    }

    /// Number of endpoints it was built for.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether it has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Picks a usable endpoint: `usable(i)` says whether endpoint `i` may be
    /// chosen, `load(i)` is its requests in flight, `key` the request's
    /// hash key (consistent-hash only; `None`, a request without one, goes
    /// to a random point of the ring). `None` when nothing is usable.
    pub fn pick(
        &self,
        key: Option<u64>,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        match &self.kind {
            Kind::RoundRobin => {
                let start = self.cursor.get();
                let found = (0..self.n)
                    .map(|k| (start + k) % self.n)
                    .find(|&i| usable(i))?;
                self.cursor.set((found + 1) % self.n);
                Some(found)
            }
            Kind::Weighted { weights, current } => {
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for (i, (&w, cur)) in weights.iter().zip(current).enumerate() {
                    if w == 0 || !usable(i) {
                        continue;
                    }
                    cur.set(cur.get() + w);
                    total += w;
                    if best.is_none_or(|b| cur.get() > current[b].get()) {
                        best = Some(i);
                    }
                }
                let b = best?;
                current[b].set(current[b].get() - total);
                Some(b)
            }
            Kind::LeastConn => {
                // Ties go in turn: the search starts past the last pick (not
                // one step on from the last start, which would hand an
                // unusable endpoint's turns to the one after it).
                let start = self.cursor.get();
                let picked = (0..self.n)
                    .map(|k| (start + k) % self.n)
                    .filter(|&i| usable(i))
                    .min_by_key(|&i| load(i))?;
                self.cursor.set((picked + 1) % self.n);
                Some(picked)
            }
            Kind::P2c => {
                if self.n == 1 {
                    return usable(0).then_some(0);
                }
                let r = self.next_random();
                let a = usize::try_from(r % self.n as u64).unwrap_or(0);
                let mut b = usize::try_from((r >> 32) % (self.n as u64 - 1)).unwrap_or(0);
                if b >= a {
                    b += 1;
                }
                match (usable(a), usable(b)) {
                    (true, true) => Some(if load(b) < load(a) { b } else { a }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    // Both drawn are out: the least loaded of the rest.
                    (false, false) => (0..self.n).filter(|&i| usable(i)).min_by_key(|&i| load(i)),
                }
            }
            Kind::Ring { points } => {
                if points.is_empty() {
                    return None;
                }
                // A request without a key is spread, not piled on the
                // endpoint of the empty key (nginx and HAProxy fall back to
                // round-robin there): a random point keeps the weights.
                let key = key.unwrap_or_else(|| self.next_random());
                let start = points.partition_point(|&(h, _)| h < key);
                (0..points.len())
                    .map(|k| points[(start + k) % points.len()].1 as usize)
                    .find(|&i| usable(i))
            }
        }
    }

    fn next_random(&self) -> u64 {
        // xorshift64*
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn ring(endpoints: &[Candidate]) -> Vec<(u64, u32)> {
    let mut points = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let Ok(index) = u32::try_from(i) else { break };
        for v in 0..e.weight.min(MAX_RING_WEIGHT) * VNODES {
            points.push((mix(e.id ^ mix(u64::from(v) + 1)), index));
        }
    }
    points.sort_unstable();
    points
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then a splitmix64 finaliser):
/// the same on every worker, run and platform, so hash-ring keys and
/// endpoint ids agree everywhere.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::HashKey;

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                weight,
                id: hash_bytes(format!("10.0.0.{i}:80").as_bytes()),
            })
            .collect()
    }

    fn counts(b: &Balancer, picks: usize, usable: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut c = vec![0; b.len()];
        for k in 0..picks {
            let key = hash_bytes(&k.to_le_bytes());
            if let Some(i) = b.pick(Some(key), &usable, |_| 0) {
                c[i] += 1;
            }
        }
        c
    }

    #[test]
    fn round_robin_cycles_and_skips_unusable() {
        let b = Balancer::new(&Balance::RoundRobin, &cands(&[1, 1, 1]), 0);
        assert_eq!(counts(&b, 300, |_| true), [100, 100, 100]);
        assert_eq!(counts(&b, 300, |i| i != 1), [150, 0, 150]);
        assert_eq!(b.pick(None, |_| false, |_| 0), None);
        let empty = Balancer::new(&Balance::RoundRobin, &[], 0);
        assert_eq!(empty.pick(None, |_| true, |_| 0), None);
    }

    #[test]
    fn smooth_wrr_is_exact_over_each_window_and_interleaved() {
        let b = Balancer::new(&Balance::WeightedRoundRobin, &cands(&[5, 1, 1]), 7);
        let seq: Vec<_> = (0..7)
            .filter_map(|_| b.pick(None, |_| true, |_| 0))
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
        // Every window of sum(weights) picks, not just the first.
        for _ in 0..10 {
            assert_eq!(counts(&b, 7, |_| true), [5, 1, 1]);
        }
        let b = Balancer::new(&Balance::WeightedRoundRobin, &cands(&[3, 0, 1]), 0);
        assert_eq!(counts(&b, 400, |_| true), [300, 0, 100], "weight 0 is out");
        assert_eq!(counts(&b, 400, |i| i != 0), [0, 0, 400]);
    }

    #[test]
    fn least_conn_takes_the_least_loaded_and_rotates_ties() {
        let b = Balancer::new(&Balance::LeastConn, &cands(&[1, 1, 1]), 0);
        let load = [5u64, 2, 9];
        assert_eq!(b.pick(None, |_| true, |i| load[i]), Some(1));
        assert_eq!(b.pick(None, |i| i != 1, |i| load[i]), Some(0));
        let mut seen = [0; 3];
        for _ in 0..30 {
            if let Some(i) = b.pick(None, |_| true, |_| 0) {
                seen[i] += 1;
            }
        }
        assert_eq!(seen, [10, 10, 10]);
        // One endpoint out: ties alternate between the other two.
        let mut seen = [0; 3];
        for _ in 0..30 {
            if let Some(i) = b.pick(None, |i| i != 1, |_| 0) {
                seen[i] += 1;
            }
        }
        assert_eq!(seen, [15, 0, 15]);
    }

    #[test]
    fn p2c_prefers_the_less_loaded_of_two() {
        let b = Balancer::new(&Balance::P2c, &cands(&[1, 1, 1, 1]), 3);
        // Server 0 always carries the most: it wins only when it is not drawn
        // against another... it never wins: each pair has a lighter member.
        let load = [100u64, 1, 1, 1];
        let c = {
            let mut c = [0; 4];
            for _ in 0..4000 {
                if let Some(i) = b.pick(None, |_| true, |i| load[i]) {
                    c[i] += 1;
                }
            }
            c
        };
        assert_eq!(c[0], 0, "{c:?}");
        for &n in &c[1..] {
            assert!((1100..=1600).contains(&n), "{c:?}");
        }
        assert_eq!(b.pick(None, |i| i == 2, |_| 0), Some(2));
        let one = Balancer::new(&Balance::P2c, &cands(&[1]), 0);
        assert_eq!(one.pick(None, |_| true, |_| 0), Some(0));
    }

    #[test]
    fn consistent_hash_spreads_requests_without_a_key_by_weight() {
        let b = Balancer::new(
            &Balance::ConsistentHash(HashKey::Path),
            &cands(&[1, 1, 2]),
            3,
        );
        let mut c = [0usize; 3];
        for _ in 0..4000 {
            if let Some(i) = b.pick(None, |_| true, |_| 0) {
                c[i] += 1;
            }
        }
        assert!(c[..2].iter().all(|&n| (700..=1300).contains(&n)), "{c:?}");
        assert!((1600..=2400).contains(&c[2]), "{c:?}");
        assert_eq!(b.pick(None, |i| i == 1, |_| 0), Some(1));
    }

    #[test]
    fn consistent_hash_moves_only_the_removed_servers_keys() {
        let ch = Balance::ConsistentHash(HashKey::Path);
        let all = cands(&[1, 1, 1, 1, 1]);
        let b5 = Balancer::new(&ch, &all, 0);
        // The same addresses minus the third: a new ring, as after DNS.
        let four: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, c)| *c)
            .collect();
        let b4 = Balancer::new(&ch, &four, 9);
        let id5 = |i: usize| all[i].id;
        let id4 = |i: usize| four[i].id;
        let keys = 10_000;
        let (mut moved, mut on_removed) = (0, 0);
        let mut per = [0usize; 5];
        for k in 0..keys {
            let key = hash_bytes(format!("user-{k}").as_bytes());
            let before = b5.pick(Some(key), |_| true, |_| 0).map(id5);
            let after = b4.pick(Some(key), |_| true, |_| 0).map(id4);
            per[all.iter().position(|c| Some(c.id) == before).unwrap_or(0)] += 1;
            if before == Some(all[2].id) {
                on_removed += 1;
            } else if before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of the remaining servers stay");
        // About 1/5 of the keys were on the removed server.
        assert!((1500..=2500).contains(&on_removed), "{on_removed}");
        for n in per {
            assert!((1400..=2600).contains(&n), "{per:?}");
        }
        // A server that is down passes its keys on, the rest stay.
        for k in 0..1000 {
            let key = hash_bytes(format!("user-{k}").as_bytes());
            let up = b5.pick(Some(key), |_| true, |_| 0);
            let down = b5.pick(Some(key), |i| i != 2, |_| 0);
            if up != Some(2) {
                assert_eq!(up, down);
            } else {
                assert_ne!(down, Some(2));
            }
        }
    }

    #[test]
    fn consistent_hash_honours_weights() {
        let b = Balancer::new(
            &Balance::ConsistentHash(HashKey::ClientIp),
            &cands(&[3, 1]),
            0,
        );
        let c = counts(&b, 20_000, |_| true);
        let share = c[0] as f64 / 20_000.0;
        assert!((0.70..=0.80).contains(&share), "{c:?}");
    }
}
