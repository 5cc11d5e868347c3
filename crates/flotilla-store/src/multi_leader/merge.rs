//! Merging a transaction from another data centre: one local commit, its rows merged under the
//! table's policies, its schema changes replayed, its conflicts recorded.

use super::*;

/// What merging into one table needs, worked out once per transaction.
struct TablePlan {
    /// The table as it is here (its columns in their order here, the key's among them).
    shape: TableShape,
    /// Where each column here takes its value from in a change: `None` when the change's
    /// columns are the table's, in order (the usual case); otherwise per column here, the
    /// change's column of that name, or the column's default (a column added here since, or
    /// in another order: two data centres each added a column at once).
    layout: Option<Vec<Source>>,
    /// For each column of the change, its index here.
    here_of: Vec<usize>,
    sql: TableSql,
    policies: TablePolicies,
    /// The table's unique indexes besides its key (where clashes are possible).
    unique: Vec<crate::unique_clash::UniqueIndex>,
    /// The table has open (keep-both) conflicts a write may resolve.
    open_conflicts: bool,
    /// The collaborative columns here (indexes): their text is the merged document's, never
    /// another data centre's value (see `collab::IncomingDocs`).
    collab: Vec<usize>,
    /// Conflicts in this table are not recorded (Flotilla's list of collaborative columns:
    /// two data centres enabling one column at once is no conflict to show).
    quiet: bool,
}

enum Source {
    Change(usize),
    Default(SqlValue),
}

impl TablePlan {
    fn new(conn: &Connection, remote: &TableShape) -> Result<TablePlan, MergeApplyError> {
        let here: Vec<(String, Option<String>)> = conn
            .prepare_cached(
                "SELECT name, dflt_value FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid",
            )?
            .query_map([&remote.name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let names: Vec<&str> = here.iter().map(|(n, _)| n.as_str()).collect();
        let mut here_of = Vec::with_capacity(remote.columns.len());
        for column in &remote.columns {
            match names.iter().position(|n| n.eq_ignore_ascii_case(column)) {
                Some(i) => here_of.push(i),
                None => {
                    return Err(MergeApplyError::Unfit(format!(
                        "a change of {} names the columns {} but the table here has {}",
                        remote.name,
                        remote.columns.join(", "),
                        names.join(", ")
                    )))
                }
            }
        }
        let in_order =
            here_of.len() == here.len() && here_of.iter().enumerate().all(|(a, b)| a == *b);
        let layout = if in_order {
            None
        } else {
            let mut layout = Vec::with_capacity(here.len());
            for (i, (_, default)) in here.iter().enumerate() {
                layout.push(match here_of.iter().position(|h| *h == i) {
                    Some(from) => Source::Change(from),
                    None => Source::Default(match default {
                        None => SqlValue::Null,
                        Some(expr) => conn
                            .query_row(&format!("SELECT {expr}"), [], |r| {
                                Ok(from_sql(r.get_ref(0)?))
                            })
                            .map_err(|e| {
                                MergeApplyError::Unfit(format!(
                                    "the default {expr} of a column of {}: {e}",
                                    remote.name
                                ))
                            })?,
                    }),
                });
            }
            Some(layout)
        };
        let shape = TableShape {
            name: remote.name.clone(),
            columns: here.iter().map(|(n, _)| n.clone()).collect(),
            key: remote
                .key
                .iter()
                .map(|k| here_of[*k as usize] as u16)
                .collect(),
        };
        let collab = crate::collab::read_collab_columns(conn)?
            .into_iter()
            .filter(|c| c.table.eq_ignore_ascii_case(&shape.name))
            .filter_map(|c| {
                shape
                    .columns
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(&c.column))
            })
            .collect();
        Ok(TablePlan {
            collab,
            quiet: shape
                .name
                .eq_ignore_ascii_case(crate::collab::COLUMNS_TABLE),
            sql: TableSql::new(&shape),
            policies: table_policies(conn, &shape)?,
            unique: crate::unique_clash::unique_indexes(conn, &shape)?,
            open_conflicts: has_open_conflicts(conn, &shape.name)?,
            shape,
            layout,
            here_of,
        })
    }

    /// A change's values in the columns here.
    fn values_here(&self, values: &[SqlValue]) -> Vec<SqlValue> {
        match &self.layout {
            None => values.to_vec(),
            Some(layout) => layout
                .iter()
                .map(|s| match s {
                    Source::Change(i) => values.get(*i).cloned().unwrap_or(SqlValue::Null),
                    Source::Default(d) => d.clone(),
                })
                .collect(),
        }
    }
}

/// SQL to read, write and delete a table's rows by key.
struct TableSql {
    select: String,
    upsert: String,
    delete: String,
}

impl TableSql {
    fn new(shape: &TableShape) -> TableSql {
        let t = quote(&shape.name);
        let cols: Vec<String> = shape.columns.iter().map(|c| quote(c)).collect();
        let keys: Vec<usize> = shape.key.iter().map(|k| *k as usize).collect();
        // Keys compare as bytes, as the merge state keeps them (a multi-leader table's key
        // index is BINARY: see schema_rules.rs), whatever collation the column declares.
        let key_where = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} IS ?{} COLLATE BINARY", cols[*k], i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let placeholders = (1..=cols.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sets: Vec<String> = (0..cols.len())
            .filter(|i| !keys.contains(i))
            .map(|i| format!("{c} = excluded.{c}", c = cols[i]))
            .collect();
        let key_cols = keys
            .iter()
            .map(|k| cols[*k].clone())
            .collect::<Vec<_>>()
            .join(", ");
        let on_conflict = if sets.is_empty() {
            format!("ON CONFLICT ({key_cols}) DO NOTHING")
        } else {
            format!("ON CONFLICT ({key_cols}) DO UPDATE SET {}", sets.join(", "))
        };
        TableSql {
            select: format!("SELECT {} FROM {t} WHERE {key_where}", cols.join(", ")),
            upsert: format!(
                "INSERT INTO {t} ({}) VALUES ({placeholders}) {on_conflict}",
                cols.join(", ")
            ),
            delete: format!("DELETE FROM {t} WHERE {key_where}"),
        }
    }
}

/// Runs a schema change that came from another data centre. Creating what exists already in
/// the same form is a no-op (two data centres may create the same table); anything else
/// that does not fit is refused, the whole transaction with it.
fn apply_remote_schema(db: &mut LeaderDb, s: &SchemaChange) -> Result<(), MergeApplyError> {
    if local_only(&s.table) {
        return Ok(());
    }
    match s.kind {
        DdlKind::CreateTable | DdlKind::CreateIndex => {
            let name = create_target(&s.sql).unwrap_or_else(|| s.table.clone());
            let existing: Option<String> = db
                .conn
                .query_row(
                    "SELECT sql FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE",
                    [&name],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(sql) if normalise(&sql) == normalise(&s.sql) => return Ok(()),
                // Two data centres made an index of one name in two forms at once: an index
                // that is not unique changes no row, so each keeps its own, and the clash is
                // recorded (a unique one, or a table, could not be merged alike everywhere).
                Some(sql)
                    if s.kind == DdlKind::CreateIndex
                        && !is_unique_index(&sql)
                        && !is_unique_index(&s.sql) =>
                {
                    let id = conflict_id(
                        &s.table,
                        name.as_bytes(),
                        Some("index"),
                        &Version::zero(),
                        &Version::zero(),
                    );
                    db.conn.execute(
                        &format!(
                            "INSERT OR IGNORE INTO {CONFLICTS_TABLE} (id, tbl, row_key, col, local_value, \
                             local_origin, local_lsn, local_hlc, remote_value, remote_origin, remote_lsn, \
                             remote_hlc, policy, winner, value, resolved) VALUES (?1, ?2, '[]', ?3, ?4, \
                             '', 0, '', ?5, '', 0, '', 'keep-each-index', 'local', ?4, 1)"
                        ),
                        params![id, s.table, format!("index {name}"), sql, s.sql],
                    )?;
                    return Ok(());
                }
                Some(sql) => {
                    return Err(MergeApplyError::Unfit(format!(
                        "{name} exists here in another form ({sql}) than the one that arrived ({})",
                        s.sql
                    )))
                }
                None => {}
            }
        }
        DdlKind::AlterTable | DdlKind::SetPragma => {}
        DdlKind::CreateView => {
            let exists: i64 = db.conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'view' AND name = ?1 COLLATE NOCASE",
                [&s.table],
                |r| r.get(0),
            )?;
            if exists > 0 {
                return Ok(());
            }
        }
        DdlKind::DropView => {
            let exists: i64 = db.conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'view' AND name = ?1 COLLATE NOCASE",
                [&s.table],
                |r| r.get(0),
            )?;
            if exists == 0 {
                return Ok(());
            }
        }
        other => {
            return Err(MergeApplyError::Unfit(format!(
                "a {} ({}) cannot be merged between data centres",
                other.as_str(),
                s.sql
            )))
        }
    }
    match db.conn.execute_batch(&s.sql) {
        Ok(()) => {}
        // The same column added on both sides: alike, nothing to do; in two forms, the rows
        // that predate it would hold different values in each (refused, both forms named).
        Err(e)
            if s.kind == DdlKind::AlterTable && e.to_string().contains("duplicate column name") =>
        {
            return column_added_alike(&db.conn, &s.table, &s.sql);
        }
        Err(e) => return Err(MergeApplyError::Unfit(format!("{}: {e}", s.sql))),
    }
    db.capture.forget_shapes();
    db.capture.schema_changed(s.clone());
    Ok(())
}

/// Whether the column an `ALTER TABLE … ADD COLUMN` from another data centre adds, and which
/// this table has already, is declared here as it is there (type, NOT NULL, default).
fn column_added_alike(conn: &Connection, table: &str, sql: &str) -> Result<(), MergeApplyError> {
    type Declared = (String, String, bool, Option<String>);
    let declared = |conn: &Connection, name: Option<&str>| -> rusqlite::Result<Option<Declared>> {
        conn.query_row(
            "SELECT name, upper(type), \"notnull\", dflt_value FROM pragma_table_xinfo(?1) \
             WHERE (?2 IS NULL AND cid = (SELECT max(cid) FROM pragma_table_xinfo(?1))) \
             OR name = ?2 COLLATE NOCASE",
            rusqlite::params![table, name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
    };
    // The column as the other data centre declared it: added to an empty table of the name.
    let there = Connection::open_in_memory()
        .and_then(|probe| {
            probe.execute_batch(&format!(
                "CREATE TABLE {} (_flotilla_probe); {sql}",
                crate::pipeline_triggers::quote(table)
            ))?;
            declared(&probe, None)
        })
        .map_err(|e| MergeApplyError::Unfit(format!("{sql}: {e}")))?;
    let Some(there) = there else {
        return Err(MergeApplyError::Unfit(format!("{sql}: added no column")));
    };
    let here = declared(conn, Some(&there.0))?;
    let show = |d: &Declared| {
        format!(
            "{} {}{}{}",
            d.0,
            d.1,
            if d.2 { " NOT NULL" } else { "" },
            d.3.as_deref()
                .map(|v| format!(" DEFAULT {v}"))
                .unwrap_or_default()
        )
    };
    match here {
        Some(h)
            if (h.1.as_str(), h.2, h.3.as_deref())
                == (there.1.as_str(), there.2, there.3.as_deref()) =>
        {
            Ok(())
        }
        Some(h) => Err(MergeApplyError::Unfit(format!(
            "column {} of {table} was added in two forms at once: `{}` here, `{}` there — the \
             rows that predate it would hold different values in each data centre; add a \
             column in one data centre only (see docs/multi-leader.md, schema changes)",
            there.0,
            show(&h),
            show(&there)
        ))),
        None => Err(MergeApplyError::Unfit(format!(
            "{sql}: SQLite says the column exists, but {table} has no column {}",
            there.0
        ))),
    }
}

fn is_unique_index(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(str::to_ascii_lowercase)
        .collect();
    words.get(1).is_some_and(|w| w == "unique")
}

fn normalise(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

/// The name a `CREATE TABLE` / `CREATE INDEX` statement creates.
pub(crate) fn create_target(sql: &str) -> Option<String> {
    let words: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == '(')
        .filter(|w| !w.is_empty())
        .collect();
    let mut i = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("table") || w.eq_ignore_ascii_case("index"))?
        + 1;
    if words.get(i).is_some_and(|w| w.eq_ignore_ascii_case("if")) {
        i += 3;
    }
    let name = words.get(i)?;
    let name = name.rsplit('.').next().unwrap_or(name);
    Some(
        name.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
            .to_string(),
    )
}

impl LeaderDb {
    /// Merges a transaction from another data centre (`changes`, stamped `stamp`, read at
    /// position and chain `peer_at` of `peer`'s log) as one local commit: the rows it changes here, their merge
    /// state, the conflicts it met, the version vector and the link position, all together.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_merge(
        &mut self,
        stamp: &ExchangeStamp,
        changes: &RowPayload,
        peer: &OriginName,
        peer_at: (flotilla_types::Position, flotilla_types::Chain),
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<MergeOutcome, MergeApplyError> {
        self.merge_as_one_commit(stamp, changes, peer, Some(peer_at), epoch, origin, now_us)
    }

    /// Merges a transaction a device pushed (checked by
    /// [`LeaderDb::check_device_batch`]), stamped with the device's origin: as one from
    /// another data centre, but read from no log of a peer.
    pub fn commit_device_merge(
        &mut self,
        stamp: &ExchangeStamp,
        changes: &RowPayload,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<MergeOutcome, MergeApplyError> {
        self.merge_as_one_commit(stamp, changes, &stamp.origin, None, epoch, origin, now_us)
    }

    #[allow(clippy::too_many_arguments)]
    fn merge_as_one_commit(
        &mut self,
        stamp: &ExchangeStamp,
        changes: &RowPayload,
        peer: &OriginName,
        peer_at: Option<(flotilla_types::Position, flotilla_types::Chain)>,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<MergeOutcome, MergeApplyError> {
        let Some(ml) = self.multi_leader.clone() else {
            return Err(MergeApplyError::Unfit(
                "this node is not a multi-leader one (no --dc)".into(),
            ));
        };
        let vv = self.version_vector()?;
        if stamp.origin == ml.dc {
            // This data centre's own transaction, come back round a ring or star: merged
            // already. One beyond what it made was made by another node that calls itself
            // this data centre.
            if !vv.covers(&ml.dc, stamp.origin_lsn) {
                return Err(MergeApplyError::Unfit(format!(
                    "a transaction stamped by data centre {} at {} arrived from {peer}, but this \
                     node is {} and made nothing there: another node calls itself {}",
                    stamp.origin, stamp.origin_lsn, ml.dc, ml.dc
                )));
            }
            return Ok(MergeOutcome::Duplicate);
        }
        if vv.covers(&stamp.origin, stamp.origin_lsn) {
            return Ok(MergeOutcome::Duplicate);
        }
        #[cfg(feature = "sim-bugs")]
        let ignore_deps = crate::injected_bugs::MERGE_IGNORES_DEPENDENCIES
            .load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(feature = "sim-bugs"))]
        let ignore_deps = false;
        if !vv.dominates(&stamp.deps) && !ignore_deps {
            let missing: Vec<String> = vv
                .missing(&stamp.deps)
                .map(|(o, l)| format!("{o} up to {l}"))
                .collect();
            return Err(MergeApplyError::NotReady(missing.join(", ")));
        }
        let hlc = ml
            .hlc
            .receive(stamp.hlc, now_us / 1000, ml.max_drift_ms)
            .map_err(|drift| MergeApplyError::Drift {
                origin: stamp.origin.clone(),
                drift,
            })?;
        let version = Version {
            hlc: stamp.hlc,
            origin: stamp.origin.clone(),
            lsn: stamp.origin_lsn,
        };
        let what = format!("merge {}/{}", stamp.origin, stamp.origin_lsn);
        let ((conflicts, documents), out) =
            self.internal_commit::<_, MergeApplyError>(&what, epoch, origin, now_us, |db, lsn| {
                let mut conflicts = 0;
                let mut incoming = crate::collab::IncomingDocs::default();
                // Per table (and schema: a schema change in the transaction starts afresh).
                let mut plans: HashMap<String, TablePlan> = HashMap::new();
                for (item, it) in changes.items.iter().enumerate() {
                    match it {
                        RowItem::Schema(s) => {
                            plans.clear();
                            db.capture.statement_done(&db.conn)?;
                            apply_remote_schema(db, s)?
                        }
                        RowItem::Change(c) => {
                            let shape = changes.shape(c);
                            let document = incoming
                                .take(shape, c)
                                .map_err(|e| MergeApplyError::Unfit(e.to_string()))?;
                            if document || local_only(&shape.name) {
                                continue;
                            }
                            if !plans.contains_key(&shape.name) {
                                if shape.name.eq_ignore_ascii_case(crate::TOKENS_TABLE) {
                                    // Made by a data centre's first token, not as a schema
                                    // change: each data centre makes it when it needs it.
                                    db.conn.execute_batch(crate::leader_tokens::CREATE_TOKENS)?;
                                }
                                if shape
                                    .name
                                    .eq_ignore_ascii_case(crate::collab::COLUMNS_TABLE)
                                {
                                    // Likewise by its first collaborative column.
                                    db.conn.execute_batch(crate::collab::CREATE_TABLES)?;
                                }
                                plans.insert(shape.name.clone(), TablePlan::new(&db.conn, shape)?);
                            }
                            let plan = &plans[&shape.name];
                            let bases: Vec<(usize, SqlValue)> = stamp
                                .counter_bases
                                .iter()
                                .filter(|b| b.item as usize == item)
                                .filter_map(|b| {
                                    let here = *plan.here_of.get(b.column as usize)?;
                                    Some((here, b.value.clone()))
                                })
                                .collect();
                            for part in by_key(shape, c) {
                                // A key's change is a new row: the counter bases of the
                                // update do not apply to it (its origin gave none).
                                let bases: &[(usize, SqlValue)] =
                                    if part.op == c.op { &bases } else { &[] };
                                conflicts += merge_change(
                                    db,
                                    shape,
                                    &part,
                                    bases,
                                    &version,
                                    &stamp.deps,
                                    plan,
                                )?;
                            }
                        }
                    }
                }
                // The documents last: their rows are in (inserted by this transaction, maybe).
                db.capture.statement_done(&db.conn)?;
                let documents = incoming.merge(&db.conn).map_err(|e| match e {
                    crate::collab::CollabError::Store(e) => MergeApplyError::Store(e),
                    e => MergeApplyError::Unfit(e.to_string()),
                })?;
                db.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO _flotilla_ml_vv (origin, lsn) VALUES (?1, ?2)",
                    )?
                    .execute(params![stamp.origin.as_str(), stamp.origin_lsn.0 as i64])?;
                if peer_at.is_none() {
                    // A device's transaction: its clock, to tell a replay from a reused number
                    // (the table is the device registry's, made with the device's origin).
                    db.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO _flotilla_device_seqs (origin, seq, hlc) \
                             VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![
                            stamp.origin.as_str(),
                            stamp.origin_lsn.0 as i64,
                            stamp.hlc.0 as i64
                        ])?;
                }
                if let Some(peer_at) = peer_at {
                    db.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO _flotilla_ml_links (peer, epoch, lsn, chain) \
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            peer.as_str(),
                            peer_at.0.epoch.0 as i64,
                            peer_at.0.lsn.0 as i64,
                            peer_at.1 .0 as i64
                        ])?;
                }
                db.capture.statement_done(&db.conn)?;
                reconsider_shadowed(db, changes)?;
                let mut passed_on = stamp.clone();
                passed_on.original = Some(changes.clone());
                remember_stamp(&db.conn, lsn, hlc, &passed_on)?;
                db.pending_exchange = Some(passed_on);
                Ok((conflicts, documents))
            })?;
        if let Some(m) = self.multi_leader.as_mut() {
            m.hlc = hlc;
        }
        Ok(MergeOutcome::Committed {
            commit: Box::new(out),
            conflicts,
            documents,
        })
    }
}

/// Shows again the shadowed rows of the tables a transaction changed whose unique values are
/// free now (a delete, or a changed value, let them go).
pub(super) fn reconsider_shadowed(
    db: &mut LeaderDb,
    changes: &RowPayload,
) -> Result<(), StoreError> {
    let mut seen: Vec<&str> = Vec::new();
    for it in &changes.items {
        let RowItem::Change(c) = it else { continue };
        let shape = changes.shape(c);
        if local_only(&shape.name) || seen.contains(&shape.name.as_str()) {
            continue;
        }
        seen.push(&shape.name);
        if crate::unique_clash::has_shadowed(&db.conn, &shape.name)? {
            // The table as it is here (columns may have been added since the change).
            let plan =
                TablePlan::new(&db.conn, shape).map_err(|e| StoreError::Apply(e.to_string()))?;
            crate::unique_clash::reconsider(db, &plan.shape, &plan.sql.upsert)?;
        }
    }
    Ok(())
}

/// Merges one row change into the table, its merge state and the conflicts table. Returns the
/// number of conflicts recorded.
#[allow(clippy::too_many_arguments)]
fn merge_change(
    db: &mut LeaderDb,
    _remote_shape: &TableShape,
    c: &flotilla_types::RowChange,
    counter_bases: &[(usize, SqlValue)],
    version: &Version,
    deps: &VersionVector,
    plan: &TablePlan,
) -> Result<usize, MergeApplyError> {
    let (sql, policies, shape) = (&plan.sql, &plan.policies, &plan.shape);
    // A change made before a column was added there (the ADD COLUMN arrived here first): the
    // new columns hold their default in that data centre's row too, and this change did not
    // write them. Columns added in two data centres at once stand in another order here.
    let placed;
    let c = if plan.layout.is_none() {
        c
    } else {
        placed = flotilla_types::RowChange {
            before: c.before.as_deref().map(|v| plan.values_here(v)),
            after: c.after.as_deref().map(|v| plan.values_here(v)),
            ..c.clone()
        };
        &placed
    };
    // A collaborative column's text there is not written here: the document merges (after
    // the rows: see `collab::IncomingDocs`) and sets it. A new row brings its first text.
    let masked;
    let c = match (&c.before, &c.after) {
        (Some(before), Some(after)) if !plan.collab.is_empty() => {
            let mut after = after.clone();
            for i in &plan.collab {
                if let (Some(a), Some(b)) = (after.get_mut(*i), before.get(*i)) {
                    *a = b.clone();
                }
            }
            masked = flotilla_types::RowChange {
                after: Some(after),
                ..c.clone()
            };
            &masked
        }
        _ => c,
    };
    let image = c.after.as_deref().or(c.before.as_deref()).unwrap_or(&[]);
    let (key_values, key) =
        row_key(shape, image).map_err(|e| MergeApplyError::Unfit(e.to_string()))?;
    let key_params: Vec<SqlArg> = key_values.iter().map(|v| SqlArg(v)).collect();
    let read_here = |db: &LeaderDb| -> Result<Option<Vec<SqlValue>>, MergeApplyError> {
        Ok(db
            .conn
            .prepare_cached(&sql.select)
            .map_err(|e| {
                MergeApplyError::Unfit(format!(
                    "table {} does not fit the change here: {e}",
                    shape.name
                ))
            })?
            .query_row(rusqlite::params_from_iter(key_params.iter()), |r| {
                (0..shape.columns.len())
                    .map(|i| Ok(from_sql(r.get_ref(i)?)))
                    .collect()
            })
            .optional()?)
    };
    let stored = load_state(&db.conn, &shape.name, &key)?;
    // What the table holds for the row: its merge state says so (an existing row's values are
    // the state's), unless a unique clash may keep it out, or it predates the merge state.
    let (state, here) = match stored {
        Some(s) if plan.unique.is_empty() && s.cells.len() == shape.columns.len() => {
            let here = s.alive(policies.delete).then(|| s.values());
            (Some(s), here)
        }
        Some(s) => {
            let here = read_here(db)?;
            (Some(s), here)
        }
        None => {
            let here = read_here(db)?;
            (here.as_deref().map(RowState::settled), here)
        }
    };
    let rule = policies.delete;
    let merged = merge_remote(
        state,
        RemoteChange {
            op: c.op,
            before: c.before.as_deref(),
            after: c.after.as_deref(),
            counter_bases,
        },
        version,
        deps,
        policies,
        &mut SqlResolver(&db.conn),
    )
    .map_err(|e| MergeApplyError::Unfit(format!("{} in {}: {e}", c.op.as_str(), shape.name)))?;
    let now_alive = merged.state.alive(rule);
    let values = merged.state.values();
    if now_alive && here.as_ref() != Some(&values) {
        if !plan.unique.is_empty() {
            // A unique value another row holds may keep it out (see unique_clash.rs).
            crate::unique_clash::place(
                db,
                shape,
                &plan.unique,
                &sql.upsert,
                &merged.state,
                here.is_some(),
            )?;
        } else {
            let args: Vec<SqlArg> = values.iter().map(SqlArg).collect();
            db.conn
                .prepare_cached(&sql.upsert)?
                .execute(rusqlite::params_from_iter(args.iter()))?;
        }
    } else if !now_alive {
        if here.is_some() {
            db.conn
                .prepare_cached(&sql.delete)?
                .execute(rusqlite::params_from_iter(key_params.iter()))?;
        }
        crate::unique_clash::forget(&db.conn, &shape.name, &key)?;
    }
    // (The capture takes these writes in at the end of the transaction's changes: see
    // `commit_merge`.)
    save_state(&db.conn, &shape.name, &key, &merged.state)?;
    let kj = key_json(&key_values);
    // A key column is the row's identity: two inserts of one key are writes of the same row,
    // and only its other columns can conflict. Counted: the conflicts recorded now (one met
    // again — the same two writes — is recorded once).
    let mut recorded = 0;
    for conflict in merged
        .conflicts
        .iter()
        .filter(|_| !plan.quiet)
        .filter(|c| c.column.is_none_or(|i| !shape.key.contains(&(i as u16))))
        .filter(|c| c.column.is_none_or(|i| !plan.collab.contains(&i)))
    {
        if record_conflict(&db.conn, shape, &key, &kj, conflict)? {
            recorded += 1;
        }
    }
    if let (Some(before), Some(after), true) =
        (c.before.as_deref(), c.after.as_deref(), plan.open_conflicts)
    {
        for (i, col) in shape.columns.iter().enumerate() {
            if before[i] != after[i] {
                resolve_seen(&db.conn, &shape.name, &kj, col, version, Some(deps))?;
            }
        }
    }
    Ok(recorded)
}

fn record_conflict(
    conn: &Connection,
    shape: &TableShape,
    key: &[u8],
    key_json: &str,
    c: &Conflict,
) -> Result<bool, StoreError> {
    let col = c.column.map(|i| shape.columns[i].as_str());
    let id = conflict_id(&shape.name, key, col, &c.local.version, &c.remote.version);
    const NULL: SqlValue = SqlValue::Null;
    fn v(x: &Option<SqlValue>) -> SqlArg<'_> {
        SqlArg(x.as_ref().unwrap_or(&NULL))
    }
    let inserted = conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {CONFLICTS_TABLE} (id, tbl, row_key, col, local_value, local_origin, \
         local_lsn, local_hlc, remote_value, remote_origin, remote_lsn, remote_hlc, policy, winner, \
         value, resolved) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    ))?
    .execute(params![
        id,
        shape.name,
        key_json,
        col,
        v(&c.local.value),
        c.local.version.origin.as_str(),
        c.local.version.lsn.0 as i64,
        c.local.version.hlc.to_string(),
        v(&c.remote.value),
        c.remote.version.origin.as_str(),
        c.remote.version.lsn.0 as i64,
        c.remote.version.hlc.to_string(),
        c.policy,
        c.winner.name(),
        v(&c.value),
        !c.open,
    ])?;
    Ok(inserted > 0)
}
