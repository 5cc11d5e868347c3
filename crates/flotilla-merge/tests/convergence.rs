//! Replicas that merged the same changes hold the same rows, whatever order the changes
//! arrived in (causal order being the only constraint), for every policy and both delete
//! rules; counter columns hold exactly the sum of all increments.

use flotilla_merge::{
    merge_remote, write_local, ColumnPolicy, CustomResolver, DeleteRule, RemoteChange, RowState,
    TablePolicies, Version,
};
use flotilla_types::{Hlc, Lsn, OriginName, RowOp, SqlValue, VersionVector};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// `custom`: the larger of the two plus ten, a deterministic expression that is neither side.
struct PlusTen;

impl CustomResolver for PlusTen {
    fn resolve(&mut self, _: &str, l: &SqlValue, r: &SqlValue) -> Result<SqlValue, String> {
        let n = |v: &SqlValue| match v {
            SqlValue::Integer(i) => *i,
            _ => 0,
        };
        Ok(SqlValue::Integer(n(l).max(n(r)) % 1000 + 10))
    }
}

struct Change {
    key: u8,
    op: RowOp,
    before: Option<Vec<SqlValue>>,
    after: Option<Vec<SqlValue>>,
    counter_bases: Vec<(usize, SqlValue)>,
}

struct Txn {
    version: Version,
    deps: VersionVector,
    changes: Vec<Change>,
}

struct Replica {
    name: OriginName,
    rows: BTreeMap<u8, RowState>,
    vv: VersionVector,
    hlc: Hlc,
    lsn: u64,
    delivered: Vec<bool>,
    conflicts: usize,
}

#[derive(Debug, Clone)]
enum Action {
    /// At replica `.0`, a transaction touching the given keys.
    Write(usize, Vec<(u8, u8, i64)>),
    /// Replica `.0` takes the `.1`-th (modulo) transaction it can apply.
    Deliver(usize, usize),
    /// Clocks of replica `.0` jump by this many ms.
    Clock(usize, u64),
}

fn action(replicas: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..replicas, prop::collection::vec((0u8..4, 0u8..4, -5i64..20), 1..4))
            .prop_map(|(r, w)| Action::Write(r, w)),
        4 => (0..replicas, 0usize..8).prop_map(|(r, i)| Action::Deliver(r, i)),
        1 => (0..replicas, 0u64..50).prop_map(|(r, j)| Action::Clock(r, j)),
    ]
}

fn policies(rule: DeleteRule) -> TablePolicies {
    TablePolicies {
        columns: vec![
            ColumnPolicy::Lww,
            ColumnPolicy::Max,
            ColumnPolicy::Min,
            ColumnPolicy::Counter,
            ColumnPolicy::KeepBoth,
            ColumnPolicy::Custom("max(local, remote) % 1000 + 10".into()),
        ],
        delete: rule,
    }
}

const WIDTH: usize = 6;

fn run(replica_count: usize, actions: &[Action], rule: DeleteRule) {
    let policies = policies(rule);
    let mut txns: Vec<(usize, Txn)> = Vec::new();
    let mut replicas: Vec<Replica> = (0..replica_count)
        .map(|i| Replica {
            name: OriginName::new(&format!("dc{i}")).unwrap(),
            rows: BTreeMap::new(),
            vv: VersionVector::new(),
            hlc: Hlc::ZERO,
            lsn: 0,
            delivered: Vec::new(),
            conflicts: 0,
        })
        .collect();
    let mut wall = vec![1_000u64; replica_count];
    // The sum of every increment made anywhere to each key's counter column, per life.
    let mut increments: BTreeMap<u8, i64> = BTreeMap::new();

    let deliver = |replicas: &mut Vec<Replica>, txns: &Vec<(usize, Txn)>, r: usize, t: usize| {
        let (from, txn) = &txns[t];
        let from_name = replicas[*from].name.clone();
        let rep = &mut replicas[r];
        assert!(rep.vv.dominates(&txn.deps));
        for c in &txn.changes {
            let state = rep.rows.remove(&c.key);
            let merged = merge_remote(
                state,
                RemoteChange {
                    op: c.op,
                    before: c.before.as_deref(),
                    after: c.after.as_deref(),
                    counter_bases: &c.counter_bases,
                },
                &txn.version,
                &txn.deps,
                &policies,
                &mut PlusTen,
            )
            .unwrap();
            rep.conflicts += merged.conflicts.len();
            rep.rows.insert(c.key, merged.state);
        }
        rep.vv.advance(&from_name, txn.version.lsn);
        rep.hlc = rep
            .hlc
            .receive(txn.version.hlc, u64::MAX >> 16, u64::MAX)
            .unwrap();
        rep.delivered[t] = true;
    };

    for a in actions {
        match a {
            Action::Clock(r, j) => wall[*r] += j,
            Action::Write(r, writes) => {
                let rep = &mut replicas[*r];
                rep.lsn += 1;
                rep.hlc = rep.hlc.tick(wall[*r]);
                let version = Version {
                    hlc: rep.hlc,
                    origin: rep.name.clone(),
                    lsn: Lsn(rep.lsn),
                };
                let deps = rep.vv.clone();
                let mut changes = Vec::new();
                for (key, kind, n) in writes {
                    let state = rep.rows.remove(key);
                    let alive = state.as_ref().is_some_and(|s| s.alive(rule));
                    let before = state.as_ref().filter(|_| alive).map(RowState::values);
                    let op = match (alive, kind) {
                        (false, _) => RowOp::Insert,
                        (true, 0) => RowOp::Delete,
                        (true, _) => RowOp::Update,
                    };
                    let after = (op != RowOp::Delete).then(|| {
                        let mut v = before
                            .clone()
                            .unwrap_or_else(|| vec![SqlValue::Integer(0); WIDTH]);
                        let col = (*kind as i64 + *n).rem_euclid(WIDTH as i64) as usize;
                        if op == RowOp::Insert {
                            v = (0..WIDTH as i64)
                                .map(|i| SqlValue::Integer(n + i))
                                .collect();
                        } else {
                            v[col] = SqlValue::Integer(*n);
                        }
                        v
                    });
                    let counter = |v: &Option<Vec<SqlValue>>| match v.as_ref().map(|v| &v[3]) {
                        Some(SqlValue::Integer(i)) => *i,
                        _ => 0,
                    };
                    let w = write_local(
                        state,
                        op,
                        before.as_deref(),
                        after.as_deref(),
                        &version,
                        &policies,
                    );
                    // What the table holds at the origin is what was written.
                    if let Some(after) = &after {
                        assert_eq!(
                            &w.state.values(),
                            after,
                            "merge state = table at the origin"
                        );
                    }
                    let base = w
                        .counter_bases
                        .iter()
                        .find(|(c, _)| *c == 3)
                        .map(|(_, v)| match v {
                            SqlValue::Integer(i) => *i,
                            _ => 0,
                        })
                        .unwrap_or(0);
                    let inc = match op {
                        RowOp::Insert => counter(&after) - base,
                        _ => counter(&after) - counter(&before),
                    };
                    *increments.entry(*key).or_default() += inc;
                    changes.push(Change {
                        key: *key,
                        op,
                        before,
                        after,
                        counter_bases: w.counter_bases,
                    });
                    rep.rows.insert(*key, w.state);
                }
                rep.vv.advance(&rep.name.clone(), Lsn(rep.lsn));
                txns.push((
                    *r,
                    Txn {
                        version,
                        deps,
                        changes,
                    },
                ));
                let t = txns.len() - 1;
                for (i, rep) in replicas.iter_mut().enumerate() {
                    rep.delivered.push(i == *r);
                }
                let _ = t;
            }
            Action::Deliver(r, pick) => {
                let ready: Vec<usize> = (0..txns.len())
                    .filter(|t| {
                        !replicas[*r].delivered[*t] && replicas[*r].vv.dominates(&txns[*t].1.deps)
                            // one origin's transactions in order
                            && replicas[*r].vv.get(&replicas[txns[*t].0].name).0 + 1
                                >= txns[*t].1.version.lsn.0
                    })
                    .filter(|t| {
                        // in order per origin: nothing earlier from the same origin pending
                        !(0..*t).any(|u| txns[u].0 == txns[*t].0 && !replicas[*r].delivered[u])
                    })
                    .collect();
                if !ready.is_empty() {
                    let t = ready[pick % ready.len()];
                    deliver(&mut replicas, &txns, *r, t);
                }
            }
        }
    }
    // Heal: deliver everything, in causal order.
    for _ in 0..txns.len() * replica_count + 1 {
        let mut progress = false;
        for r in 0..replica_count {
            for t in 0..txns.len() {
                let ok = !replicas[r].delivered[t]
                    && replicas[r].vv.dominates(&txns[t].1.deps)
                    && !(0..t).any(|u| txns[u].0 == txns[t].0 && !replicas[r].delivered[u]);
                if ok {
                    deliver(&mut replicas, &txns, r, t);
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    for r in &replicas {
        assert!(r.delivered.iter().all(|d| *d), "{} got everything", r.name);
    }
    let view = |r: &Replica| -> BTreeMap<u8, (bool, Vec<SqlValue>, Option<Version>)> {
        r.rows
            .iter()
            .map(|(k, s)| (*k, (s.alive(rule), s.values(), s.created.clone())))
            .collect()
    };
    let first = view(&replicas[0]);
    for r in &replicas[1..] {
        assert_eq!(view(r), first, "{} and {} differ", r.name, replicas[0].name);
    }
    // Counters: every increment counted exactly once.
    for (key, (_, values, _)) in &first {
        let want = increments.get(key).copied().unwrap_or(0);
        assert_eq!(values[3], SqlValue::Integer(want), "counter of key {key}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400)
    ))]

    #[test]
    fn replicas_converge_with_deletes_winning(actions in prop::collection::vec(action(3), 1..60)) {
        run(3, &actions, DeleteRule::DeleteWins);
    }

    #[test]
    fn replicas_converge_with_updates_winning(actions in prop::collection::vec(action(3), 1..60)) {
        run(3, &actions, DeleteRule::UpdateWins);
    }

    #[test]
    fn five_replicas_converge(actions in prop::collection::vec(action(5), 1..80)) {
        run(5, &actions, DeleteRule::DeleteWins);
    }
}
