//! Model -> ordered list of candidate backends (REFERENCE section 1).
//!
//! Rules are matched exact first, then by prefix in file order, else the default group. Inside a
//! group one backend is chosen by weight, deterministically per request id (FNV-1a of the id), so
//! a retried request with the same `x-request-id` lands on the same backend; the others follow in
//! file order as fallbacks. Everything is resolved to backend indexes at build time, and a lookup
//! allocates nothing.

pub mod balance;
pub mod breaker;
pub mod live;
pub mod retry;

use std::sync::Arc;

use crate::guardrails::Guardrails;

/// A backend index with its weight (> 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weighted {
    pub backend: usize,
    pub weight: f64,
}

/// A set of backends to choose from.
#[derive(Debug, Clone, Default)]
pub struct Group {
    members: Vec<Weighted>,
    total: f64,
}

impl Group {
    /// Build a group, dropping weights that are not > 0 (they mean "disabled").
    pub fn new(members: impl IntoIterator<Item = Weighted>) -> Group {
        let members: Vec<Weighted> = members
            .into_iter()
            .filter(|w| w.weight.is_finite() && w.weight > 0.0)
            .collect();
        let total = members.iter().map(|w| w.weight).sum();
        Group { members, total }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Candidates for a request whose id hashes to `hash`.
    pub fn candidates(&self, hash: u64) -> Candidates<'_> {
        Candidates {
            members: &self.members,
            first: self.pick(hash),
            next: 0,
        }
    }

    fn pick(&self, hash: u64) -> usize {
        if self.members.len() <= 1 {
            return 0;
        }
        // FNV-1a's high bits barely move between similar ids ("req-1", "req-2"), so mix them
        // (murmur3's finalizer) before mapping the hash to [0, total).
        let mut h = hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        let mut point = (h >> 11) as f64 / (1u64 << 53) as f64 * self.total;
        for (i, m) in self.members.iter().enumerate() {
            if point < m.weight {
                return i;
            }
            point -= m.weight;
        }
        self.members.len() - 1
    }
}

/// The ordered candidates of one request: the weighted choice first, then the rest in order.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    members: &'a [Weighted],
    first: usize,
    /// Position in the fallback walk; `0` means the first pick has not been yielded yet.
    next: usize,
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        if self.next == 0 {
            self.next = 1;
            return Some(self.members[self.first].backend);
        }
        // Fallbacks: every member except `first`, in file order.
        let mut i = self.next - 1;
        if i >= self.first {
            i += 1;
        }
        if i >= self.members.len() {
            return None;
        }
        self.next += 1;
        Some(self.members[i].backend)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    group: Group,
    /// Position in the file (for [`Router::with_rule_guardrails`]).
    index: usize,
    /// The rule's guardrails: they replace the key's for requests it matches.
    guardrails: Option<Arc<Guardrails>>,
}

/// The compiled router.
#[derive(Debug, Clone, Default)]
pub struct Router {
    exact: Vec<Rule>,
    prefix: Vec<Rule>,
    default: Group,
}

impl Router {
    /// `rules` are `(model_prefix, exact, group)` in file order. A trailing `*` on a prefix is
    /// ignored (`gpt-4*` is the prefix `gpt-4`).
    pub fn new(rules: impl IntoIterator<Item = (String, bool, Group)>, default: Group) -> Router {
        let mut r = Router {
            default,
            ..Router::default()
        };
        for (index, (pattern, exact, group)) in rules.into_iter().enumerate() {
            let guardrails = None;
            if exact {
                r.exact.push(Rule {
                    pattern,
                    group,
                    index,
                    guardrails,
                });
            } else {
                let pattern = pattern.strip_suffix('*').unwrap_or(&pattern).to_string();
                r.prefix.push(Rule {
                    pattern,
                    group,
                    index,
                    guardrails,
                });
            }
        }
        r
    }

    /// Attach compiled guardrails to the rules, given in file order.
    pub fn with_rule_guardrails(mut self, guards: Vec<Option<Arc<Guardrails>>>) -> Router {
        for rule in self.exact.iter_mut().chain(self.prefix.iter_mut()) {
            rule.guardrails = guards.get(rule.index).cloned().flatten();
        }
        self
    }

    /// The group serving `model` and the matching rule's guardrails, if it has any.
    pub fn route(&self, model: Option<&str>) -> (&Group, Option<&Arc<Guardrails>>) {
        match self.rule_for(model) {
            Some(rule) => (&rule.group, rule.guardrails.as_ref()),
            None => (&self.default, None),
        }
    }

    /// Whether any rule carries guardrails (then an upload's form is read to find its model).
    pub fn has_rule_guardrails(&self) -> bool {
        self.exact
            .iter()
            .chain(&self.prefix)
            .any(|r| r.guardrails.is_some())
    }

    fn rule_for(&self, model: Option<&str>) -> Option<&Rule> {
        let m = model?;
        self.exact.iter().find(|r| r.pattern == m).or_else(|| {
            self.prefix
                .iter()
                .find(|r| m.starts_with(r.pattern.as_str()))
        })
    }

    /// The group serving `model` (the default group when no rule matches or there is no model).
    pub fn group_for(&self, model: Option<&str>) -> &Group {
        self.route(model).0
    }

    /// Ordered candidate backends for `model`, for the request identified by `request_id`.
    pub fn candidates(&self, model: Option<&str>, request_id: &str) -> Candidates<'_> {
        self.group_for(model)
            .candidates(fnv1a(request_id.as_bytes()))
    }
}

/// 64-bit FNV-1a: tiny, stable across versions and platforms (the choice must not change when
/// the gateway is upgraded), and good enough to spread request ids over weights.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(ws: &[(usize, f64)]) -> Group {
        Group::new(
            ws.iter()
                .map(|&(backend, weight)| Weighted { backend, weight }),
        )
    }

    #[test]
    fn exact_rules_win_over_prefix_rules_then_default() {
        let r = Router::new(
            vec![
                ("gpt-4".to_string(), false, g(&[(1, 1.0)])),
                ("gpt-4o".to_string(), true, g(&[(2, 1.0)])),
                ("claude*".to_string(), false, g(&[(3, 1.0)])),
            ],
            g(&[(0, 1.0)]),
        );
        let first = |m: Option<&str>| r.candidates(m, "id").next();
        assert_eq!(first(Some("gpt-4o")), Some(2));
        assert_eq!(first(Some("gpt-4o-mini")), Some(1));
        assert_eq!(first(Some("claude-3")), Some(3));
        assert_eq!(first(Some("llama")), Some(0));
        assert_eq!(first(None), Some(0));
    }

    #[test]
    fn candidates_list_chosen_first_then_the_rest_in_order() {
        let grp = g(&[(10, 1.0), (11, 1.0), (12, 1.0)]);
        for id in ["a", "b", "c", "d", "e", "f"] {
            let list: Vec<usize> = grp.candidates(fnv1a(id.as_bytes())).collect();
            assert_eq!(list.len(), 3);
            let mut sorted = list.clone();
            sorted.sort();
            assert_eq!(sorted, vec![10, 11, 12]);
            let rest: Vec<usize> = list[1..].to_vec();
            let mut in_order = rest.clone();
            in_order.sort();
            assert_eq!(rest, in_order, "fallbacks keep file order");
        }
    }

    #[test]
    fn choice_is_deterministic_and_follows_weights() {
        let grp = g(&[(0, 3.0), (1, 1.0), (2, 0.0), (3, -1.0)]);
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            let id = format!("req-{i}");
            let a = grp.candidates(fnv1a(id.as_bytes())).next().expect("one");
            let b = grp.candidates(fnv1a(id.as_bytes())).next().expect("one");
            assert_eq!(a, b);
            counts[a] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "weights <= 0 are dropped");
        let share = counts[0] as f64 / 10_000.0;
        assert!(
            (0.70..0.80).contains(&share),
            "share of weight 3 of 4: {share}"
        );
    }

    #[test]
    fn empty_group_yields_nothing() {
        assert_eq!(g(&[]).candidates(1).next(), None);
        assert_eq!(g(&[(0, 0.0)]).candidates(1).count(), 0);
    }
}
