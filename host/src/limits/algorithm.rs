//! The four rate-limit algorithms as pure state machines over an injected
//! clock (microseconds). The in-process store runs these directly; the Redis
//! store runs the same arithmetic in Lua (`redis.lua`), and the table tests
//! below pin the behaviour both must have.
//!
//! Each algorithm has two steps so a request with several rules is
//! all-or-nothing: `check` says whether the request fits without changing
//! anything; `commit` takes the units. A store checks every rule of a request
//! first and commits only if all of them fit.

use std::collections::HashMap;

use serde::Serialize;

/// How a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// A sliding window approximated from the current and previous fixed
    /// windows, the previous weighted by how much of it still overlaps.
    SlidingWindow,
    /// A counter per aligned window (`now / window`).
    FixedWindow,
    /// GCRA: `limit` units per `window`, bursts of up to `burst` at once.
    TokenBucket,
    /// At most `limit` requests in flight; a lease expires after `window`
    /// so a host that dies holding one does not leak it.
    Concurrency,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding-window",
            Algorithm::FixedWindow => "fixed-window",
            Algorithm::TokenBucket => "token-bucket",
            Algorithm::Concurrency => "concurrency",
        }
    }
}

/// What a rule allows; `window_us` and the clock are in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window_us: u64,
    /// Token bucket only; 0 means `limit`.
    pub burst: u64,
}

/// The answer for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    /// Units left after this request (when allowed) or now (when refused).
    pub remaining: u64,
    /// Microseconds until the limit is fully available again.
    pub reset_us: u64,
    /// Refused only: microseconds until a retry can succeed.
    pub retry_after_us: u64,
}

impl Verdict {
    /// `retry_after_us` in whole seconds, at least 1: what `Retry-After`
    /// and the refusal's details carry.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_us.div_ceil(1_000_000).max(1)
    }
}

/// The stored state of one counter.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum State {
    #[default]
    Empty,
    Window {
        index: u64,
        current: u64,
        previous: u64,
    },
    /// GCRA's theoretical arrival time.
    Bucket {
        tat_us: u64,
    },
    /// Lease id ─▶ expiry.
    Leases(HashMap<String, u64>),
}

impl State {
    /// When the state no longer matters and may be dropped.
    pub fn expires_at(&self, limit: &Limit) -> u64 {
        match self {
            State::Empty => 0,
            State::Window { index, .. } => (index + 2).saturating_mul(limit.window_us.max(1)),
            State::Bucket { tat_us } => *tat_us,
            State::Leases(leases) => leases.values().copied().max().unwrap_or(0),
        }
    }
}

/// Whether `cost` more units fit at `now`. Changes nothing.
pub fn check(state: &State, limit: &Limit, cost: u64, now: u64) -> Verdict {
    let window = limit.window_us.max(1);
    match limit.algorithm {
        Algorithm::FixedWindow => {
            let index = now / window;
            let used = match state {
                State::Window { index: i, current, .. } if *i == index => *current,
                _ => 0,
            };
            let reset = (index + 1) * window - now;
            counted(limit.limit, used, cost, reset, reset)
        }
        Algorithm::SlidingWindow => {
            let index = now / window;
            let (current, previous) = rolled(state, index);
            let elapsed = now - index * window;
            // Weight of the previous window: the share of it still inside
            // the sliding window ending now, rounded up so the estimate
            // never admits more than the limit.
            let weighted = (previous as u128 * (window - elapsed) as u128).div_ceil(window as u128) as u64;
            let used = weighted + current;
            let window_end = (index + 1) * window - now;
            // When refused: if the current window alone is full, wait for it
            // to end; otherwise until the previous window's weight has faded
            // to what still fits.
            let retry = if current + cost > limit.limit || previous == 0 {
                window_end
            } else {
                let target = (limit.limit - current - cost) as u128;
                let elapsed_needed = window.saturating_sub((target * window as u128 / previous as u128) as u64);
                elapsed_needed.saturating_sub(elapsed).clamp(1, window_end)
            };
            let reset = window_end;
            counted(limit.limit, used, cost, reset, retry)
        }
        Algorithm::TokenBucket => {
            let interval = emission_interval(limit);
            let tau = burst(limit) * interval;
            let tat = match state {
                State::Bucket { tat_us } => (*tat_us).max(now),
                _ => now,
            };
            let new_tat = tat + cost * interval;
            if new_tat - now > tau {
                let remaining = (tau.saturating_sub(tat - now)) / interval;
                Verdict {
                    allowed: false,
                    limit: burst(limit),
                    remaining,
                    reset_us: tat - now,
                    retry_after_us: new_tat - now - tau,
                }
            } else {
                Verdict {
                    allowed: true,
                    limit: burst(limit),
                    remaining: (tau - (new_tat - now)) / interval,
                    reset_us: new_tat - now,
                    retry_after_us: 0,
                }
            }
        }
        Algorithm::Concurrency => {
            let live: Vec<u64> = match state {
                State::Leases(leases) => leases.values().copied().filter(|&e| e > now).collect(),
                _ => Vec::new(),
            };
            let used = live.len() as u64;
            let first_expiry = live.iter().min().map_or(0, |e| e - now);
            counted(limit.limit, used, cost.min(1), first_expiry, first_expiry)
        }
    }
}

/// Takes the units `check` allowed. `lease` names the concurrency lease.
pub fn commit(state: &mut State, limit: &Limit, cost: u64, now: u64, lease: &str) {
    let window = limit.window_us.max(1);
    match limit.algorithm {
        Algorithm::FixedWindow => {
            let index = now / window;
            let current = match state {
                State::Window { index: i, current, .. } if *i == index => *current,
                _ => 0,
            };
            *state = State::Window { index, current: current + cost, previous: 0 };
        }
        Algorithm::SlidingWindow => {
            let index = now / window;
            let (current, previous) = rolled(state, index);
            *state = State::Window { index, current: current + cost, previous };
        }
        Algorithm::TokenBucket => {
            let tat = match state {
                State::Bucket { tat_us } => (*tat_us).max(now),
                _ => now,
            };
            *state = State::Bucket { tat_us: tat + cost * emission_interval(limit) };
        }
        Algorithm::Concurrency => {
            let mut leases = match std::mem::take(state) {
                State::Leases(l) => l,
                _ => HashMap::new(),
            };
            leases.retain(|_, e| *e > now);
            leases.insert(lease.to_string(), now + window);
            *state = State::Leases(leases);
        }
    }
}

/// Ends a concurrency lease (the request finished).
pub fn release(state: &mut State, lease: &str) {
    if let State::Leases(leases) = state {
        leases.remove(lease);
    }
}

/// The current and previous window counts as seen from window `index`.
fn rolled(state: &State, index: u64) -> (u64, u64) {
    match *state {
        State::Window { index: i, current, previous } if i == index => (current, previous),
        State::Window { index: i, current, .. } if i + 1 == index => (0, current),
        _ => (0, 0),
    }
}

fn counted(limit: u64, used: u64, cost: u64, reset: u64, retry: u64) -> Verdict {
    if used + cost <= limit {
        Verdict { allowed: true, limit, remaining: limit - used - cost, reset_us: reset, retry_after_us: 0 }
    } else {
        Verdict { allowed: false, limit, remaining: limit.saturating_sub(used), reset_us: reset, retry_after_us: retry }
    }
}

/// GCRA's emission interval: one unit every `window / limit`.
pub fn emission_interval(limit: &Limit) -> u64 {
    (limit.window_us / limit.limit.max(1)).max(1)
}

fn burst(limit: &Limit) -> u64 {
    if limit.burst == 0 { limit.limit.max(1) } else { limit.burst }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn lim(algorithm: Algorithm, limit: u64, window_s: u64, burst: u64) -> Limit {
        Limit { algorithm, limit, window_us: window_s * S, burst }
    }

    /// Runs `steps` of (time in µs, cost, expected allowed) against one counter.
    fn run(limit: Limit, steps: &[(u64, u64, bool)]) -> State {
        let mut state = State::Empty;
        for (n, &(at, cost, want)) in steps.iter().enumerate() {
            let v = check(&state, &limit, cost, at);
            assert_eq!(v.allowed, want, "step {n} at {at}µs cost {cost}: {v:?}");
            if v.allowed {
                commit(&mut state, &limit, cost, at, &format!("lease-{n}"));
            } else {
                assert!(v.retry_after_us > 0, "step {n}: a refusal says when to retry: {v:?}");
            }
        }
        state
    }

    #[test]
    fn fixed_window_counts_per_aligned_window() {
        let l = lim(Algorithm::FixedWindow, 3, 60, 0);
        run(
            l,
            &[
                (0, 1, true),
                (10 * S, 1, true),
                (59 * S, 1, true),
                (59 * S + 999_999, 1, false), // last microsecond of the window
                (60 * S, 1, true),            // window edge: a new window
                (60 * S, 2, true),
                (61 * S, 1, false),
            ],
        );
        let state = State::Window { index: 0, current: 3, previous: 0 };
        let v = check(&state, &l, 1, 45 * S);
        assert_eq!((v.remaining, v.reset_us, v.retry_after_us), (0, 15 * S, 15 * S));
    }

    #[test]
    fn fixed_window_allows_the_double_burst_at_an_edge() {
        // The known weakness that the sliding window fixes.
        run(lim(Algorithm::FixedWindow, 2, 60, 0), &[(59 * S, 2, true), (60 * S, 2, true)]);
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let l = lim(Algorithm::SlidingWindow, 10, 60, 0);
        // 10 at the end of window 0 ...
        let mut state = run(l, &[(59 * S, 10, true)]);
        // ... at the start of window 1 nearly all of them still count.
        let v = check(&state, &l, 1, 60 * S);
        assert!(!v.allowed, "{v:?}");
        // Half way through window 1, half of them count: 5 fit, not 6.
        assert!(check(&state, &l, 5, 90 * S).allowed);
        assert!(!check(&state, &l, 6, 90 * S).allowed);
        // The retry hint is when the fading weight lets one in: after 6 s
        // of window 1, 10 × 54/60 = 9 count.
        let v = check(&state, &l, 1, 60 * S);
        assert_eq!(v.retry_after_us, 6 * S, "{v:?}");
        assert!(check(&state, &l, 1, 66 * S).allowed);
        assert!(!check(&state, &l, 1, 66 * S - 1).allowed);
        // Two windows later nothing counts.
        commit(&mut state, &l, 1, 66 * S, "");
        assert!(check(&state, &l, 10, 180 * S).allowed);
    }

    #[test]
    fn sliding_window_admits_late_in_a_window_after_a_full_one() {
        // A full previous window, late in the current one: the weight has
        // faded, so this is allowed (and computing its retry hint must not
        // underflow: it once panicked here).
        let l = lim(Algorithm::SlidingWindow, 10, 60, 0);
        let state = State::Window { index: 1, current: 0, previous: 10 };
        let v = check(&state, &l, 1, 119 * S);
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.remaining, 8, "{v:?}");
    }

    #[test]
    fn sliding_window_refuses_the_double_burst() {
        run(lim(Algorithm::SlidingWindow, 2, 60, 0), &[(59 * S, 2, true), (60 * S, 2, false), (60 * S, 1, false)]);
    }

    #[test]
    fn sliding_window_full_current_window_waits_for_its_end() {
        let l = lim(Algorithm::SlidingWindow, 3, 60, 0);
        let state = run(l, &[(0, 3, true)]);
        let v = check(&state, &l, 1, 20 * S);
        assert_eq!((v.allowed, v.remaining, v.retry_after_us), (false, 0, 40 * S));
    }

    #[test]
    fn token_bucket_bursts_then_refills_at_the_rate() {
        // 60 a minute = one a second, bursts of 5.
        let l = lim(Algorithm::TokenBucket, 60, 60, 5);
        let state = run(
            l,
            &[
                (0, 1, true),
                (0, 1, true),
                (0, 1, true),
                (0, 1, true),
                (0, 1, true),
                (0, 1, false), // the burst is spent
                (S - 1, 1, false),
                (S, 1, true), // one unit refilled a second later
                (S, 1, false),
                (10 * S, 5, true), // after idling, a full burst again
                (10 * S, 1, false),
            ],
        );
        let v = check(&state, &l, 1, 10 * S);
        assert_eq!((v.limit, v.remaining, v.retry_after_us), (5, 0, S));
        assert_eq!(v.reset_us, 5 * S, "full again after 5 s");
    }

    #[test]
    fn token_bucket_refuses_a_cost_above_the_burst() {
        run(lim(Algorithm::TokenBucket, 10, 1, 3), &[(0, 4, false), (0, 3, true)]);
    }

    #[test]
    fn token_bucket_remaining_counts_down() {
        let l = lim(Algorithm::TokenBucket, 100, 100, 0);
        let mut state = State::Empty;
        for want in (0..100).rev() {
            let v = check(&state, &l, 1, 0);
            assert_eq!((v.allowed, v.remaining), (true, want));
            commit(&mut state, &l, 1, 0, "");
        }
        assert!(!check(&state, &l, 1, 0).allowed);
    }

    #[test]
    fn concurrency_holds_leases_until_released_or_expired() {
        let l = lim(Algorithm::Concurrency, 2, 60, 0);
        let mut state = State::Empty;
        assert!(check(&state, &l, 1, 0).allowed);
        commit(&mut state, &l, 1, 0, "a");
        assert!(check(&state, &l, 1, S).allowed);
        commit(&mut state, &l, 1, S, "b");
        let v = check(&state, &l, 1, 2 * S);
        assert_eq!((v.allowed, v.remaining, v.retry_after_us), (false, 0, 58 * S));
        release(&mut state, "a");
        assert!(check(&state, &l, 1, 2 * S).allowed);
        commit(&mut state, &l, 1, 2 * S, "c");
        assert!(!check(&state, &l, 1, 3 * S).allowed);
        // `b` was never released (its host died): it expires after the window.
        assert!(!check(&state, &l, 1, 61 * S - 1).allowed);
        assert!(check(&state, &l, 1, 61 * S).allowed);
    }

    #[test]
    fn expired_state_can_be_dropped() {
        let l = lim(Algorithm::FixedWindow, 1, 60, 0);
        let state = State::Window { index: 3, current: 1, previous: 0 };
        assert_eq!(state.expires_at(&l), 300 * S);
    }
}
