//! Detection's memory budget: every rule's groups weighed against one byte budget
//! (`detect.max_state_bytes`). Whoever controls a grouped field (a user name in failed logins,
//! a source address) can create groups without end; past the budget, the rule holding the most
//! sheds its least recently seen sixteenth, and again, until the state is back within
//! [`RESUME`] of the budget. What is shed counts as evicted, so that the rule's
//! `vigil.detect.state_evicted` alert says a flood is pushing counters out.
//!
//! Weighing walks every group, so it is done only when the state could be over: an estimate
//! from each rule's group count and its bytes per group at the last weighing is checked after
//! every [`CHECK_ROWS`] rows, and the groups are weighed when it passes the budget, every
//! [`REWEIGH_ROWS`] rows (groups also grow without new ones: more events in their windows),
//! and at every state checkpoint ([`Budget::enforce`]).

use crate::rules::Rule;

/// After shedding, the state is at most this share of the budget (so that it is not weighed
/// again at the next piece).
pub(crate) const RESUME: f64 = 15.0 / 16.0;

/// Rows evaluated between two weighings however the estimate stands.
pub(crate) const REWEIGH_ROWS: u64 = 1 << 18;

/// Rows evaluated between two looks at the estimate (a look is cheap, but not free).
pub(crate) const CHECK_ROWS: u64 = 1024;

/// Bytes per group assumed for a rule never weighed.
const FIRST_GUESS_BYTES: usize = 256;

/// The budget and what the last weighing found.
#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: usize,
    /// Per rule: bytes at the last weighing, and per group then.
    bytes: Vec<usize>,
    per_group: Vec<usize>,
    weighed_at_rows: Option<u64>,
    /// Rows evaluated under this budget.
    rows: u64,
    /// Groups shed to stay within the budget, in all.
    pub shed: u64,
    /// Times the budget was reached.
    pub reached: u64,
}

impl Budget {
    pub(crate) fn new(max_bytes: usize) -> Budget {
        assert!(max_bytes > 0, "detect.max_state_bytes must be > 0");
        Budget {
            max_bytes,
            bytes: Vec::new(),
            per_group: Vec::new(),
            weighed_at_rows: None,
            rows: 0,
            shed: 0,
            reached: 0,
        }
    }

    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The state's bytes as last weighed.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.iter().sum()
    }

    /// The state's bytes as estimated now (from the groups each rule holds).
    pub(crate) fn estimate(&self, rules: &[Rule]) -> usize {
        rules
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                rule.kind.groups() * self.per_group.get(r).copied().unwrap_or(FIRST_GUESS_BYTES)
            })
            .sum()
    }

    /// A row was evaluated: every [`CHECK_ROWS`], [`Budget::check`].
    pub(crate) fn evaluated(&mut self, rules: &mut [Rule]) -> u64 {
        self.rows += 1;
        if self.rows.is_multiple_of(CHECK_ROWS) {
            self.check(rules)
        } else {
            0
        }
    }

    /// Weigh the state if it may be over the budget, and shed until it is not. The groups
    /// shed.
    pub(crate) fn check(&mut self, rules: &mut [Rule]) -> u64 {
        let rows = self.rows;
        let due = self
            .weighed_at_rows
            .is_none_or(|at| rows.saturating_sub(at) >= REWEIGH_ROWS);
        if !due && self.estimate(rules) <= self.max_bytes {
            return 0;
        }
        self.enforce(rules)
    }

    /// Weigh the state now, and shed until it is within the budget. The groups shed.
    pub(crate) fn enforce(&mut self, rules: &mut [Rule]) -> u64 {
        self.weigh(rules);
        if self.bytes() <= self.max_bytes {
            return 0;
        }
        self.reached += 1;
        let target = (self.max_bytes as f64 * RESUME) as usize;
        let mut shed = 0;
        // Each round takes a sixteenth of the heaviest rule: bounded however the weights fall.
        for _ in 0..256 {
            if self.bytes() <= target {
                break;
            }
            let Some((r, _)) = self.bytes.iter().enumerate().max_by_key(|(_, b)| **b) else {
                break;
            };
            let n = rules[r].kind.shed();
            if n == 0 {
                break;
            }
            shed += n;
            self.weigh_one(rules, r);
        }
        self.shed += shed;
        shed
    }

    /// Weigh every rule.
    pub(crate) fn weigh(&mut self, rules: &[Rule]) {
        self.bytes.resize(rules.len(), 0);
        self.per_group.resize(rules.len(), FIRST_GUESS_BYTES);
        for r in 0..rules.len() {
            self.weigh_one(rules, r);
        }
        self.weighed_at_rows = Some(self.rows);
    }

    fn weigh_one(&mut self, rules: &[Rule], r: usize) {
        let (bytes, groups) = (rules[r].kind.weigh(), rules[r].kind.groups());
        self.bytes[r] = bytes;
        self.per_group[r] = bytes.checked_div(groups).unwrap_or(FIRST_GUESS_BYTES);
    }

    /// Per rule, the bytes at the last weighing.
    pub(crate) fn rule_bytes(&self, r: usize) -> usize {
        self.bytes.get(r).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Engine;
    use crate::evidence::at;
    use crate::row::OwnedRow;
    use crate::rules::{Defaults, Source, load};

    const S: i64 = 1_000_000_000;

    fn engine(max_bytes: usize) -> Engine {
        let rule = |id: &str, by: &str| {
            format!(
                "id = \"{id}\"\nversion = 1\ntitle = \"t\"\nseverity = \"high\"\nkind = \"threshold\"\n\
                 filter = 'decision == \"deny\"'\ngroup_by = [\"{by}\"]\ncount = 3\nwindow = \"1h\"\nsuppress = \"1h\"\n"
            )
        };
        let l = load(
            &[
                Source {
                    name: "flooded.toml".into(),
                    text: rule("t.flooded", "caller_ip"),
                    dir: None,
                },
                Source {
                    name: "quiet.toml".into(),
                    text: rule("t.quiet", "caller_principal"),
                    dir: None,
                },
            ],
            &Defaults {
                max_groups: 10_000_000,
                ..Defaults::default()
            },
        );
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        Engine::new(l.rules.into_iter().map(|(r, _)| r).collect()).with_state_budget(max_bytes)
    }

    fn deny(ip: &str, principal: &str) -> OwnedRow {
        OwnedRow::of(&[
            ("decision", "deny"),
            ("caller_ip", ip),
            ("caller_principal", principal),
        ])
    }

    #[test]
    fn a_flood_of_new_keys_is_held_within_the_budget_by_evicting_the_oldest_of_the_rule_it_floods()
    {
        let budget = 1 << 20;
        let mut e = engine(budget);
        // The attacker's own counter: two denials, then a flood of 200 000 new addresses
        // (each a group of the address rule; all under one principal for the other rule).
        e.observe_row(&deny("10.9.9.9", "spiffe://x/attacker"), at(S), 0);
        e.observe_row(&deny("10.9.9.9", "spiffe://x/attacker"), at(2 * S), 0);
        // 196 × 1 024 rows in all: the last row is a look at the budget.
        for i in 0..200_702u32 {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            e.observe_row(&deny(&ip, "spiffe://x/flood"), at(3 * S + i64::from(i)), 0);
        }
        let b = e.state_budget();
        assert!(b.bytes <= budget, "as of the last look: {b:?}");
        assert!(b.reached >= 1 && b.shed > 100_000, "{b:?}");
        let stats = e.stats();
        let (flooded, quiet) = (&stats[0], &stats[1]);
        assert_eq!(
            flooded.evicted, b.shed,
            "what the budget sheds counts as evicted"
        );
        assert!(
            flooded.groups < 20_000 && flooded.groups > 1_000,
            "{flooded:?}"
        );
        assert_eq!(
            (quiet.groups, quiet.evicted),
            (2, 0),
            "the quiet rule keeps its groups"
        );
        // The newest flood addresses are kept: two more denials from the last one fire.
        let last = "10.3.15.253"; // i = 200 701
        e.observe_row(&deny(last, "spiffe://y"), at(4 * S), 0);
        e.observe_row(&deny(last, "spiffe://y"), at(4 * S), 0);
        assert_eq!(
            e.take_pending().len(),
            2,
            "the flood fired the principal's alert, and this"
        );
        // The attacker's own counter was the oldest: it went (and the eviction is an alert,
        // raised by the detection loop from the counter: `system_alerts::Evictions`).
        e.observe_row(&deny("10.9.9.9", "spiffe://z"), at(5 * S), 0);
        assert!(
            e.take_pending().is_empty(),
            "its third denial starts a new count"
        );
    }

    #[test]
    fn under_the_budget_nothing_is_shed_and_the_groups_are_weighed_only_at_the_first_look() {
        let mut e = engine(64 << 20);
        for i in 0..5_000u32 {
            e.observe_row(
                &deny(&format!("10.0.{}.{}", i >> 8, i & 255), "p"),
                at(S),
                0,
            );
        }
        let b = e.state_budget();
        assert_eq!((b.reached, b.shed), (0, 0));
        e.weigh_state();
        let now = e.state_budget();
        // Weighed at the first look (1 024 rows), then only estimated: far under the budget.
        assert!(
            b.bytes > 1_024 * 100 && b.bytes < now.bytes / 2,
            "{b:?} {now:?}"
        );
    }
}
