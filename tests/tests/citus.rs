//! The schema against Citus's rules for the placement SCALING.md plans:
//! `health_data`, `zk_proofs` and `zk_verifications` distributed by
//! `user_id` (co-located), the small, shared tables as reference tables, the
//! operator's tables local to the coordinator. Citus is not packaged for
//! Debian, so its rules are checked on the catalog of the real, migrated
//! schema; each rule quotes the error Citus gives when it is broken.

use anyhow::Result;
use hailan_tests::TestDb;
use std::collections::BTreeMap;

const DISTRIBUTION_COLUMN: &str = "user_id";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Placement {
    /// `create_distributed_table(t, 'user_id', colocate_with => 'health_data')`
    Distributed,
    /// `create_reference_table(t)`: a copy on every node.
    Reference,
    /// Stays on the coordinator only.
    Local,
}

/// Every table of the schema and where it goes (SCALING.md, "Citus").
const PLAN: &[(&str, Placement)] = &[
    ("health_data", Placement::Distributed),
    ("zk_proofs", Placement::Distributed),
    ("zk_verifications", Placement::Distributed),
    ("users", Placement::Reference),
    ("gateways", Placement::Reference),
    ("gateway_patients", Placement::Reference),
    ("iot_devices", Placement::Reference),
    ("device_seq_ranges", Placement::Reference),
    ("care_grants", Placement::Reference),
    ("api_tokens", Placement::Reference),
    ("rejected_readings", Placement::Local),
    ("audit_logs", Placement::Local),
    ("_sqlx_migrations", Placement::Local),
];

/// (name, table, referenced table, columns, referenced columns, ON DELETE, ON UPDATE)
type ForeignKey = (
    String,
    String,
    String,
    Vec<String>,
    Vec<String>,
    String,
    String,
);

fn placement(table: &str) -> Option<Placement> {
    PLAN.iter().find(|(t, _)| *t == table).map(|(_, p)| *p)
}

#[tokio::test]
async fn the_schema_keeps_citus_rules_for_the_planned_placement() -> Result<()> {
    let db = TestDb::create().await?;
    let mut broken = Vec::new();

    // Every top-level table has a planned placement (a new table must choose).
    let tables: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relkind = 'p' FROM pg_class c \
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') \
         AND NOT c.relispartition ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    for (t, _) in &tables {
        if placement(t).is_none() {
            broken.push(format!("{t}: no placement in the plan (SCALING.md)"));
        }
    }
    for (t, _) in PLAN {
        if !tables.iter().any(|(x, _)| x == t) {
            broken.push(format!("{t}: planned but not in the schema"));
        }
    }

    // Partitioning one level deep: "distributing multi-level partitioned
    // tables is not supported".
    let nested: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c WHERE c.relispartition AND c.relkind = 'p'",
    )
    .fetch_all(&db.pool)
    .await?;
    for t in nested {
        broken.push(format!("{t}: a partitioned partition"));
    }

    // Distributed tables carry the distribution column, NOT NULL ("cannot
    // perform an INSERT with NULL in the partition column"), and no identity
    // column ("Distributed relations must not use GENERATED ... AS IDENTITY").
    let columns: Vec<(String, String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text, a.attnotnull, a.attidentity <> '' \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .fetch_all(&db.pool)
    .await?;
    for (t, p) in PLAN {
        if *p != Placement::Distributed {
            continue;
        }
        match columns
            .iter()
            .find(|(ct, col, _, _)| ct == t && col == DISTRIBUTION_COLUMN)
        {
            Some((_, _, true, _)) => {}
            Some(_) => broken.push(format!("{t}.{DISTRIBUTION_COLUMN} is nullable")),
            None => broken.push(format!("{t} has no {DISTRIBUTION_COLUMN}")),
        }
        for (ct, col, _, identity) in &columns {
            if ct == t && *identity {
                broken.push(format!("{t}.{col} is an identity column"));
            }
        }
    }

    // Unique indexes (primary keys and unique constraints included) of a
    // distributed table contain the distribution column: "creating unique
    // indexes on non-partition columns is currently unsupported".
    let unique: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, \
                array(SELECT a.attname::text FROM unnest(x.indkey) k JOIN pg_attribute a \
                      ON a.attrelid = t.oid AND a.attnum = k) \
         FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid \
         WHERE x.indisunique AND t.relnamespace = 'public'::regnamespace AND NOT t.relispartition",
    )
    .fetch_all(&db.pool)
    .await?;
    for (t, index, cols) in &unique {
        if placement(t) == Some(Placement::Distributed)
            && !cols.iter().any(|c| c == DISTRIBUTION_COLUMN)
        {
            broken.push(format!(
                "{t}: unique index {index} {cols:?} lacks {DISTRIBUTION_COLUMN}"
            ));
        }
    }

    // Foreign keys: "supported in two cases, either in between two colocated
    // tables including partition column in the same ordinal in the both
    // tables or from distributed to reference tables"; a reference or local
    // table may not reference a distributed one; with the distribution
    // column in the key, "SET NULL or SET DEFAULT is not supported in ON
    // DELETE operation" and "SET NULL, SET DEFAULT or CASCADE is not
    // supported in ON UPDATE operation".
    let fks: Vec<ForeignKey> =
        sqlx::query_as(
            "SELECT c.conname::text, s.relname::text, r.relname::text, \
                    array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o) \
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o), \
                    array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o) \
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o), \
                    c.confdeltype::text, c.confupdtype::text \
             FROM pg_constraint c JOIN pg_class s ON s.oid = c.conrelid JOIN pg_class r ON r.oid = c.confrelid \
             WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace AND NOT s.relispartition",
        )
        .fetch_all(&db.pool)
        .await?;
    for (name, from, to, cols, ref_cols, on_delete, on_update) in &fks {
        let (Some(pf), Some(pt)) = (placement(from), placement(to)) else {
            continue;
        };
        let with_key = cols.iter().any(|c| c == DISTRIBUTION_COLUMN);
        let fine = match (pf, pt) {
            (Placement::Distributed, Placement::Distributed) => {
                let at = cols.iter().position(|c| c == DISTRIBUTION_COLUMN);
                at.is_some() && at == ref_cols.iter().position(|c| c == DISTRIBUTION_COLUMN)
            }
            (_, Placement::Distributed) => false,
            (_, _) => true,
        };
        if !fine {
            broken.push(format!(
                "{from} → {to} ({name}): not allowed between {pf:?} and {pt:?}"
            ));
        }
        if pf == Placement::Distributed && with_key {
            if matches!(on_delete.as_str(), "n" | "d") {
                broken.push(format!(
                    "{name}: ON DELETE SET NULL/DEFAULT on the distribution column"
                ));
            }
            if matches!(on_update.as_str(), "n" | "d" | "c") {
                broken.push(format!(
                    "{name}: ON UPDATE SET NULL/DEFAULT/CASCADE on the distribution column"
                ));
            }
        }
    }

    let by_table: BTreeMap<&str, Placement> = PLAN.iter().copied().collect();
    assert!(
        broken.is_empty(),
        "the schema breaks Citus's rules for {by_table:?}:\n{}",
        broken.join("\n")
    );
    db.drop().await
}
