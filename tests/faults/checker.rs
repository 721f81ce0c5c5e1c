//! Checks a run's history:
//! - per key, the latest version behaves as one register: every read returns the value of the
//!   last put linearized before it (or none after a delete), searched WGL-style (Wing & Gong,
//!   with Lowe's memo of linearized-set and state) over the operations' real-time intervals;
//!   an operation of unknown outcome may take effect at any point after its invocation;
//! - every acknowledged put's version is there at the end with its exact bytes, and the
//!   versions of a key are ordered as they were acknowledged;
//! - no read returned bytes that no put wrote.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::workload::{Kind, Op, Outcome, Res};

#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub what: String,
    pub key: Option<usize>,
    /// The operations involved (ids in the history).
    pub ops: Vec<u64>,
    pub detail: String,
}

/// What the end of a run found for one key: each version listed (newest first) and what its
/// bytes are (a value id, or why they are not one).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalKey {
    pub versions: Vec<(u64, Result<u64, String>)>,
    /// Why the versions could not be listed, if they could not.
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub anomalies: Vec<Anomaly>,
    /// Keys whose search ran out of its budget (neither proven nor refuted).
    pub inconclusive: Vec<usize>,
}

/// Linearization states explored per key before the search gives up (inconclusive).
const SEARCH_BUDGET: u64 = 5_000_000;

pub fn check(history: &[Op], finals: &BTreeMap<usize, FinalKey>) -> Verdict {
    let mut v = Verdict::default();
    let by_id: HashMap<u64, &Op> = history.iter().map(|o| (o.id, o)).collect();
    // Reads of bytes no put wrote.
    for o in history {
        if let Outcome::Ok(Res::Corrupt(why)) = &o.outcome {
            v.anomalies.push(Anomaly {
                what: "read returned bytes no put wrote".into(),
                key: o.key,
                ops: vec![o.id],
                detail: why.clone(),
            });
        }
    }
    let mut keys: Vec<usize> = history.iter().filter_map(|o| o.key).collect();
    keys.sort_unstable();
    keys.dedup();
    for &k in &keys {
        let ops: Vec<&Op> = history.iter().filter(|o| o.key == Some(k)).collect();
        let fin = finals.get(&k).cloned().unwrap_or_default();
        let committed = check_versions(k, &ops, &fin, &by_id, &mut v.anomalies);
        match linearize(&ops, &committed) {
            Search::Linearizable => {}
            Search::Inconclusive => v.inconclusive.push(k),
            Search::Violation { ops, state } => v.anomalies.push(Anomaly {
                what: "not linearizable (latest version of a key)".into(),
                key: Some(k),
                detail: format!(
                    "no order explains op {} given the operations before it (value then: {})",
                    ops.first().copied().unwrap_or(0),
                    match state {
                        Some(x) => format!("value {x}"),
                        None => "none".into(),
                    }
                ),
                ops,
            }),
        }
    }
    v
}

/// Checks the key's final versions against the acknowledged puts; returns the value ids of
/// every put that committed (acknowledged, or found among the versions).
fn check_versions(
    k: usize,
    ops: &[&Op],
    fin: &FinalKey,
    by_id: &HashMap<u64, &Op>,
    out: &mut Vec<Anomaly>,
) -> HashSet<u64> {
    let mut committed = HashSet::new();
    let acked: Vec<(&Op, u64)> = ops
        .iter()
        .filter_map(|o| match (&o.kind, &o.outcome) {
            (Kind::Put { .. }, Outcome::Ok(Res::Version(ver))) => Some((*o, *ver)),
            _ => None,
        })
        .collect();
    if let Some(e) = &fin.error {
        out.push(Anomaly {
            what: "versions could not be read after the faults healed".into(),
            key: Some(k),
            ops: Vec::new(),
            detail: e.clone(),
        });
        for (o, _) in &acked {
            committed.insert(o.id);
        }
        return committed;
    }
    let listed: HashMap<u64, &Result<u64, String>> =
        fin.versions.iter().map(|(ver, r)| (*ver, r)).collect();
    for pair in fin.versions.windows(2) {
        if pair[0].0 <= pair[1].0 {
            out.push(Anomaly {
                what: "versions not listed newest first".into(),
                key: Some(k),
                ops: Vec::new(),
                detail: format!("version {} listed before {}", pair[0].0, pair[1].0),
            });
        }
    }
    for (o, ver) in &acked {
        committed.insert(o.id);
        match listed.get(ver) {
            None => out.push(Anomaly {
                what: "acknowledged write lost".into(),
                key: Some(k),
                ops: vec![o.id],
                detail: format!(
                    "version {ver} (value {}) is not among the key's versions",
                    o.id
                ),
            }),
            Some(Err(why)) => out.push(Anomaly {
                what: "acknowledged write not readable with its bytes".into(),
                key: Some(k),
                ops: vec![o.id],
                detail: format!("version {ver}: {why}"),
            }),
            Some(Ok(id)) if *id != o.id => out.push(Anomaly {
                what: "acknowledged version holds another value".into(),
                key: Some(k),
                ops: vec![o.id, *id],
                detail: format!("version {ver} holds value {id}, not {}", o.id),
            }),
            Some(Ok(_)) => {}
        }
    }
    // Versions nobody acknowledged must be puts of this key that were tried.
    for (ver, r) in &fin.versions {
        if let Ok(id) = r {
            match by_id.get(id) {
                Some(o) if matches!(o.kind, Kind::Put { .. }) && o.key == Some(k) => {
                    if !matches!(o.outcome, Outcome::Fail(_)) {
                        committed.insert(*id);
                    } else {
                        out.push(Anomaly {
                            what: "a put reported as failed committed".into(),
                            key: Some(k),
                            ops: vec![*id],
                            detail: format!("version {ver} holds value {id}"),
                        });
                    }
                }
                _ => out.push(Anomaly {
                    what: "a version holds a value never written to this key".into(),
                    key: Some(k),
                    ops: vec![*id],
                    detail: format!("version {ver}"),
                }),
            }
        }
    }
    // Acknowledged order: a put acknowledged before another began has the smaller version.
    for (a, va) in &acked {
        for (b, vb) in &acked {
            if a.done_ms < b.invoke_ms && va >= vb {
                out.push(Anomaly {
                    what: "versions out of acknowledged order".into(),
                    key: Some(k),
                    ops: vec![a.id, b.id],
                    detail: format!(
                        "op {} (version {va}) was acknowledged before op {} (version {vb}) began",
                        a.id, b.id
                    ),
                });
            }
        }
    }
    committed
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Put(u64),
    DeleteOk,
    DeleteAbsent,
    DeleteUnknown,
    Read(Option<u64>),
}

struct Entry {
    id: u64,
    invoke: f64,
    /// Infinity for an operation of unknown outcome.
    ret: f64,
    step: Step,
    /// Must be linearized (it took effect or was observed); unknown deletes need not.
    required: bool,
}

fn apply(state: Option<u64>, step: Step) -> Option<Option<u64>> {
    match step {
        Step::Put(v) => Some(Some(v)),
        Step::DeleteOk => state.map(|_| None),
        Step::DeleteAbsent => state.is_none().then_some(None),
        Step::DeleteUnknown => Some(None),
        Step::Read(r) => (state == r).then_some(state),
    }
}

#[derive(Debug, PartialEq)]
enum Search {
    Linearizable,
    Inconclusive,
    /// The operations at the deepest point the search reached that none could follow.
    Violation {
        ops: Vec<u64>,
        state: Option<u64>,
    },
}

fn linearize(ops: &[&Op], committed: &HashSet<u64>) -> Search {
    let mut entries: Vec<Entry> = Vec::new();
    for o in ops {
        let known = !matches!(o.outcome, Outcome::Unknown(_));
        let step = match (&o.kind, &o.outcome) {
            (Kind::Put { value, .. }, Outcome::Ok(_) | Outcome::Unknown(_)) => {
                // A put of unknown outcome happened iff its value is among the versions.
                if !committed.contains(value) {
                    continue;
                }
                Step::Put(*value)
            }
            (Kind::Delete, Outcome::Ok(Res::Trashed)) => Step::DeleteOk,
            (Kind::Delete, Outcome::Ok(Res::Absent)) => Step::DeleteAbsent,
            (Kind::Delete, Outcome::Unknown(_)) => Step::DeleteUnknown,
            (Kind::Get, Outcome::Ok(Res::Value(v))) => Step::Read(*v),
            _ => continue,
        };
        entries.push(Entry {
            id: o.id,
            invoke: o.invoke_ms,
            ret: if known { o.done_ms } else { f64::INFINITY },
            step,
            required: step != Step::DeleteUnknown,
        });
    }
    entries.sort_by(|a, b| a.invoke.total_cmp(&b.invoke));
    let required = entries.iter().filter(|e| e.required).count();
    let mut s = Searcher {
        e: &entries,
        memo: HashSet::new(),
        explored: 0,
        deepest: (0, Vec::new(), None),
    };
    let mut bits = vec![0u64; entries.len().div_ceil(64)];
    // Deep histories recurse deeply: the search runs on a thread with a large stack.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(512 << 20)
            .spawn_scoped(scope, || match s.dfs(&mut bits, 0, required, None) {
                Some(true) => Search::Linearizable,
                None => Search::Inconclusive,
                Some(false) => {
                    let (_, frontier, state) = s.deepest.clone();
                    Search::Violation {
                        ops: frontier,
                        state,
                    }
                }
            })
            .expect("checker thread")
            .join()
            .expect("checker thread panicked")
    })
}

struct Searcher<'a> {
    e: &'a [Entry],
    memo: HashSet<(Vec<u64>, Option<u64>)>,
    explored: u64,
    /// Most required operations linearized on any path, the operations that could come next
    /// there (earliest-returning first) and the value at that point.
    deepest: (usize, Vec<u64>, Option<u64>),
}

impl Searcher<'_> {
    /// Some(true): the rest can be linearized; None: out of budget.
    fn dfs(
        &mut self,
        bits: &mut Vec<u64>,
        done: usize,
        required: usize,
        state: Option<u64>,
    ) -> Option<bool> {
        if done == required {
            return Some(true);
        }
        self.explored += 1;
        if self.explored > SEARCH_BUDGET {
            return None;
        }
        let is_set = |bits: &Vec<u64>, i: usize| bits[i / 64] & (1 << (i % 64)) != 0;
        let min_ret = (0..self.e.len())
            .filter(|&i| !is_set(bits, i))
            .map(|i| self.e[i].ret)
            .fold(f64::INFINITY, f64::min);
        if done >= self.deepest.0 {
            let mut frontier: Vec<usize> = (0..self.e.len())
                .filter(|&i| !is_set(bits, i) && self.e[i].invoke <= min_ret)
                .collect();
            frontier.sort_by(|&a, &b| self.e[a].ret.total_cmp(&self.e[b].ret));
            self.deepest = (
                done,
                frontier.iter().map(|&i| self.e[i].id).collect(),
                state,
            );
        }
        for i in 0..self.e.len() {
            let e = &self.e[i];
            if e.invoke > min_ret {
                break; // entries are in invocation order
            }
            if is_set(bits, i) {
                continue;
            }
            let Some(next) = apply(state, e.step) else {
                continue;
            };
            bits[i / 64] |= 1 << (i % 64);
            if self.memo.insert((bits.clone(), next)) {
                let d = done + usize::from(e.required);
                match self.dfs(bits, d, required, next) {
                    Some(true) => return Some(true),
                    None => return None,
                    Some(false) => {}
                }
            }
            bits[i / 64] &= !(1 << (i % 64));
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, kind: Kind, invoke: f64, done: f64, outcome: Outcome) -> Op {
        Op {
            id,
            client: 0,
            node: 0,
            key: Some(0),
            kind,
            invoke_ms: invoke,
            done_ms: done,
            outcome,
        }
    }

    fn put(id: u64, t0: f64, t1: f64, ver: u64) -> Op {
        op(
            id,
            Kind::Put {
                value: id,
                len: 100,
            },
            t0,
            t1,
            Outcome::Ok(Res::Version(ver)),
        )
    }

    fn read(id: u64, t0: f64, t1: f64, v: Option<u64>) -> Op {
        op(id, Kind::Get, t0, t1, Outcome::Ok(Res::Value(v)))
    }

    fn finals(versions: &[(u64, u64)]) -> BTreeMap<usize, FinalKey> {
        BTreeMap::from([(
            0,
            FinalKey {
                versions: versions.iter().map(|&(v, id)| (v, Ok(id))).collect(),
                error: None,
            },
        )])
    }

    #[test]
    fn a_linearizable_history_passes() {
        let h = vec![
            put(1, 0.0, 10.0, 5),
            read(2, 5.0, 6.0, None), // concurrent with the put: may see before it
            read(3, 11.0, 12.0, Some(1)),
            put(4, 13.0, 20.0, 6),
            read(5, 14.0, 15.0, Some(1)),
            read(6, 16.0, 25.0, Some(4)),
            op(7, Kind::Delete, 26.0, 27.0, Outcome::Ok(Res::Trashed)),
            read(8, 28.0, 29.0, None),
            op(9, Kind::Delete, 30.0, 31.0, Outcome::Ok(Res::Absent)),
        ];
        let v = check(&h, &finals(&[(6, 4), (5, 1)]));
        assert!(v.anomalies.is_empty(), "{:?}", v.anomalies);
        assert!(v.inconclusive.is_empty());
    }

    #[test]
    fn a_stale_read_is_an_anomaly() {
        let h = vec![
            put(1, 0.0, 10.0, 5),
            put(2, 11.0, 12.0, 6),
            read(3, 13.0, 14.0, Some(1)), // value 2 was acknowledged before the read began
        ];
        let v = check(&h, &finals(&[(6, 2), (5, 1)]));
        assert_eq!(v.anomalies.len(), 1, "{:?}", v.anomalies);
        assert!(v.anomalies[0].what.contains("not linearizable"));
        assert!(v.anomalies[0].ops.contains(&3), "{:?}", v.anomalies[0]);
    }

    #[test]
    fn a_delete_of_a_missing_key_contradicting_reads_is_an_anomaly() {
        let h = vec![
            put(1, 0.0, 10.0, 5),
            op(2, Kind::Delete, 11.0, 12.0, Outcome::Ok(Res::Absent)),
        ];
        let v = check(&h, &finals(&[(5, 1)]));
        assert_eq!(v.anomalies.len(), 1, "{:?}", v.anomalies);
    }

    #[test]
    fn unknown_puts_count_only_when_their_version_exists() {
        let unknown = |id, t0| {
            op(
                id,
                Kind::Put {
                    value: id,
                    len: 100,
                },
                t0,
                f64::INFINITY,
                Outcome::Unknown("timeout".into()),
            )
        };
        // Value 2's put timed out but committed: a later read may see it.
        let h = vec![
            put(1, 0.0, 10.0, 5),
            unknown(2, 11.0),
            read(3, 30.0, 31.0, Some(2)),
        ];
        let v = check(&h, &finals(&[(6, 2), (5, 1)]));
        assert!(v.anomalies.is_empty(), "{:?}", v.anomalies);
        // Not among the versions: it never happened, so reading it is an anomaly.
        let v = check(&h, &finals(&[(5, 1)]));
        assert!(!v.anomalies.is_empty());
    }

    #[test]
    fn lost_and_reordered_versions_are_anomalies() {
        let h = vec![put(1, 0.0, 10.0, 7), put(2, 11.0, 12.0, 6)];
        let v = check(&h, &finals(&[(7, 1)]));
        let whats: Vec<&str> = v.anomalies.iter().map(|a| a.what.as_str()).collect();
        assert!(whats.contains(&"acknowledged write lost"), "{whats:?}");
        assert!(
            whats.contains(&"versions out of acknowledged order"),
            "{whats:?}"
        );
    }

    #[test]
    fn a_corrupt_read_is_an_anomaly() {
        let h = vec![op(
            1,
            Kind::Get,
            0.0,
            1.0,
            Outcome::Ok(Res::Corrupt("flipped".into())),
        )];
        let v = check(&h, &BTreeMap::new());
        assert_eq!(v.anomalies.len(), 1);
    }
}
