//! Writing a [`Plan`] in one transaction, as the `hailan_ingest` role.
//!
//! Set-based: each kind of row is one `INSERT … SELECT FROM UNNEST(…)`.
//! Readings are idempotent on the reading key (a plain INSERT in a
//! savepoint, then, if a row is already stored, a bare `ON CONFLICT DO
//! NOTHING`: ingest has no SELECT on `health_data`), so a redelivered
//! message changes nothing. Device rows are locked in id order before their
//! state and seq ranges are written, which keeps two ingest processes
//! writing the same device from deadlocking and makes the seq-range
//! bookkeeping exact. The lock is taken after the rows are inserted (unless
//! the batch registers devices): the inserts of two consumers writing the
//! same devices then run side by side, and only the short tail — device
//! state, seq ranges, commit — is serialised.

use crate::plan::{Plan, ReadingRow};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// What a committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Readings inserted into `health_data` (rows).
    pub readings_new: u64,
    /// Readings of the plan that were already stored (redelivery), so not inserted again.
    pub readings_duplicate: u64,
    /// Rows inserted into `rejected_readings`; a message already held (same
    /// topic and payload) is not counted again.
    pub quarantined: u64,
}

/// Merge `seqs` into sorted, disjoint, non-adjacent ranges.
pub fn merge_ranges(existing: &[(i64, i64)], seqs: &BTreeSet<i64>) -> Vec<(i64, i64)> {
    let mut all: Vec<(i64, i64)> = existing.to_vec();
    all.extend(seqs.iter().map(|s| (*s, *s)));
    all.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(all.len());
    for (lo, hi) in all {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Number of sequence numbers missing between the ranges.
pub fn missing(ranges: &[(i64, i64)]) -> i64 {
    ranges.windows(2).map(|w| w[1].0 - w[0].1 - 1).sum()
}

/// Write `plan`; `verifier_name` is recorded in `zk_verifications`.
pub async fn write(pool: &PgPool, plan: &Plan, verifier_name: &str) -> Result<Written> {
    let mut tx = pool
        .begin()
        .await
        .context("starting the batch transaction")?;
    sqlx::query("SET LOCAL ROLE hailan_ingest")
        .execute(&mut *tx)
        .await?;
    // Registrations come before the readings that reference them; a batch
    // with registrations locks its devices first, as all batches once did.
    let registers = !plan.devices.is_empty();
    if registers {
        lock_devices(&mut tx, plan)
            .await
            .context("locking devices")?;
        write_devices(&mut tx, plan)
            .await
            .context("writing registrations")?;
    }
    let new = write_readings(&mut tx, &plan.readings)
        .await
        .context("writing readings")?;
    write_proofs(&mut tx, plan, verifier_name)
        .await
        .context("writing proofs")?;
    let quarantined = write_quarantine(&mut tx, plan)
        .await
        .context("writing quarantine")?;
    if !registers {
        lock_devices(&mut tx, plan)
            .await
            .context("locking devices")?;
    }
    write_states(&mut tx, plan)
        .await
        .context("writing device states")?;
    write_seq_ranges(&mut tx, &plan.readings)
        .await
        .context("updating sync state")?;
    tx.commit().await.context("committing the batch")?;
    Ok(Written {
        readings_new: new,
        readings_duplicate: plan.readings.len() as u64 - new,
        quarantined,
    })
}

/// Lock every existing device the plan touches, in id order, before its
/// state and seq ranges are written. `FOR NO KEY UPDATE` serialises
/// concurrent batches of one device (so the seq-range bookkeeping is exact)
/// without conflicting with the `FOR KEY SHARE` locks that the readings'
/// foreign keys take — so it can be taken after the inserts; with
/// `FOR UPDATE` taken late, two consumers deadlocked on exactly that.
async fn lock_devices(tx: &mut Transaction<'_, Postgres>, plan: &Plan) -> Result<()> {
    let ids: BTreeSet<Uuid> = plan
        .readings
        .iter()
        .map(|r| r.device)
        .chain(plan.states.iter().map(|s| s.device))
        .chain(plan.devices.iter().filter(|d| !d.new).map(|d| d.id))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = ids.into_iter().collect();
    sqlx::query("SELECT id FROM iot_devices WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn write_devices(tx: &mut Transaction<'_, Postgres>, plan: &Plan) -> Result<()> {
    for d in &plan.devices {
        let r = &d.registration;
        // Re-pairing: a device at this address on this gateway under
        // another id is the same hardware, forgotten and paired again. The
        // old row keeps its readings but gives up the address. Not for a
        // user slot of a shared device: it shares the address with the
        // device and its other slots (the device's own re-pairing, which
        // comes first, has let go of the old ones).
        if d.new && r.user_slot_of.is_none() {
            sqlx::query(
                "UPDATE iot_devices SET bluetooth_address = NULL, is_active = false
                  WHERE gateway_id = $1 AND bluetooth_address = $2 AND device_id <> $3",
            )
            .bind(&d.gateway_id)
            .bind(&r.bluetooth_address)
            .bind(&r.device_id)
            .execute(&mut **tx)
            .await?;
        }
        if d.new {
            sqlx::query(
                "INSERT INTO iot_devices (id, user_id, device_id, device_name, device_type, bluetooth_address,
                        firmware_version, hardware_version, gateway_id, manufacturer, model, serial_number,
                        data_types, zk_device_commitment, shared_device_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now())
                 ON CONFLICT DO NOTHING",
            )
            .bind(d.id)
            .bind(d.user_id)
            .bind(&r.device_id)
            .bind(&r.name)
            .bind(&r.device_type)
            .bind(&r.bluetooth_address)
            .bind(&r.firmware_version)
            .bind(&r.hardware_version)
            .bind(&d.gateway_id)
            .bind(&r.manufacturer)
            .bind(&r.model)
            .bind(&r.serial)
            .bind(&r.data_types)
            .bind(r.device_commitment.as_slice())
            .bind(&r.user_slot_of)
            .execute(&mut **tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE iot_devices SET device_name = COALESCE($2, device_name),
                        firmware_version = COALESCE($3, firmware_version),
                        hardware_version = COALESCE($4, hardware_version),
                        manufacturer = COALESCE($5, manufacturer), model = COALESCE($6, model),
                        serial_number = COALESCE($7, serial_number), data_types = $8, is_active = true
                  WHERE id = $1",
            )
            .bind(d.id)
            .bind(&r.name)
            .bind(&r.firmware_version)
            .bind(&r.hardware_version)
            .bind(&r.manufacturer)
            .bind(&r.model)
            .bind(&r.serial)
            .bind(&r.data_types)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn write_states(tx: &mut Transaction<'_, Postgres>, plan: &Plan) -> Result<()> {
    // Latest state per device wins; an older one (reordered delivery) never
    // overwrites a newer one already stored.
    let mut latest: BTreeMap<Uuid, &hailan_proto::envelope::DeviceState> = BTreeMap::new();
    for s in &plan.states {
        let keep = latest
            .get(&s.device)
            .is_none_or(|old| old.observed_at_ms <= s.state.observed_at_ms);
        if keep {
            latest.insert(s.device, &s.state);
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = latest.keys().copied().collect();
    let battery: Vec<Option<i32>> = latest
        .values()
        .map(|s| s.battery_level.map(i32::from))
        .collect();
    let rssi: Vec<Option<i16>> = latest.values().map(|s| s.rssi).collect();
    let connection: Vec<&str> = latest
        .values()
        .map(|s| {
            if s.connected {
                "CONNECTED"
            } else {
                "DISCONNECTED"
            }
        })
        .collect();
    let firmware: Vec<Option<String>> = latest
        .values()
        .map(|s| s.firmware_version.clone())
        .collect();
    let observed: Vec<Option<DateTime<Utc>>> = latest
        .values()
        .map(|s| DateTime::from_timestamp_millis(s.observed_at_ms))
        .collect();
    let needs_repair: Vec<Option<bool>> = latest.values().map(|s| s.needs_repair).collect();
    // A state observed before the newest one stored never overwrites it —
    // nor one observed before its gateway went offline: `link::apply` moved
    // `state_observed_at` up to that moment with the UNKNOWN it wrote.
    sqlx::query(
        "UPDATE iot_devices d
            SET battery_level = COALESCE(s.battery, d.battery_level), rssi = COALESCE(s.rssi, d.rssi),
                connection_state = s.connection, firmware_version = COALESCE(s.firmware, d.firmware_version),
                needs_repair = COALESCE(s.needs_repair, d.needs_repair),
                state_observed_at = s.observed, last_sync = now()
           FROM UNNEST($1::uuid[], $2::int[], $3::int2[], $4::text[], $5::text[], $6::timestamptz[], $7::bool[])
                AS s(id, battery, rssi, connection, firmware, observed, needs_repair)
          WHERE d.id = s.id
            AND (d.state_observed_at IS NULL OR d.state_observed_at < s.observed
                 OR (d.state_observed_at = s.observed AND d.gateway_offline_since IS NULL))",
    )
    .bind(&ids)
    .bind(&battery)
    .bind(&rssi)
    .bind(&connection)
    .bind(&firmware)
    .bind(&observed)
    .bind(&needs_repair)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_readings(tx: &mut Transaction<'_, Postgres>, rows: &[ReadingRow]) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&ReadingRow) -> Uuid| rows.iter().map(f).collect::<Vec<_>>();
    let user_ids = col(|r| r.user_id);
    let devices = col(|r| r.device);
    let data_types: Vec<&str> = rows.iter().map(|r| r.data_type.as_str()).collect();
    let values: Vec<&serde_json::Value> = rows.iter().map(|r| &r.value).collect();
    let units: Vec<Option<&str>> = rows.iter().map(|r| r.unit.as_deref()).collect();
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|r| r.recorded_at).collect();
    let hashes: Vec<Option<&str>> = rows.iter().map(|r| r.proof_hash.as_deref()).collect();
    let verified: Vec<bool> = rows.iter().map(|r| r.verified).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let gateways: Vec<&str> = rows.iter().map(|r| r.gateway_id.as_str()).collect();
    let commitments: Vec<&[u8]> = rows.iter().map(|r| r.commitment.as_slice()).collect();
    let cids: Vec<&str> = rows.iter().map(|r| r.data_cid.as_str()).collect();
    // Most batches hold no reading that is already stored: a plain INSERT
    // in a savepoint skips `ON CONFLICT`'s speculative insertion (13 % of
    // PostgreSQL's time for 16,000 rows). A redelivered batch fails on the
    // reading key and is inserted again, `ON CONFLICT DO NOTHING`.
    let insert = |on_conflict: &'static str| {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO health_data (user_id, device_id, data_type, value, unit, recorded_at, zk_proof_hash,
                                      verified, verified_at, seq, gateway_id, reading_commitment, ipfs_data_cid)
             SELECT u, d, t, v, un, ra, h, ve, CASE WHEN ve THEN now() END, s, g, c, cid
               FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::text[], $6::timestamptz[],
                           $7::text[], $8::bool[], $9::int8[], $10::text[], $11::bytea[], $12::text[])
                    AS x(u, d, t, v, un, ra, h, ve, s, g, c, cid)
             {on_conflict}"
        )))
        .bind(&user_ids)
        .bind(&devices)
        .bind(&data_types)
        .bind(&values)
        .bind(&units)
        .bind(&recorded)
        .bind(&hashes)
        .bind(&verified)
        .bind(&seqs)
        .bind(&gateways)
        .bind(&commitments)
        .bind(&cids)
    };
    sqlx::query("SAVEPOINT readings").execute(&mut **tx).await?;
    let result = match insert("").execute(&mut **tx).await {
        Ok(result) => result,
        Err(e) if is_unique_violation(&e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT readings")
                .execute(&mut **tx)
                .await?;
            insert("ON CONFLICT DO NOTHING").execute(&mut **tx).await?
        }
        Err(e) => return Err(e.into()),
    };
    sqlx::query("RELEASE SAVEPOINT readings")
        .execute(&mut **tx)
        .await?;
    Ok(result.rows_affected())
}

/// A unique key refused a row (SQLSTATE 23505).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}

async fn write_proofs(
    tx: &mut Transaction<'_, Postgres>,
    plan: &Plan,
    verifier_name: &str,
) -> Result<()> {
    if plan.proofs.is_empty() {
        return Ok(());
    }
    let p = &plan.proofs;
    let users: Vec<Uuid> = p.iter().map(|x| x.user_id).collect();
    let hashes: Vec<&str> = p.iter().map(|x| x.proof_hash.as_str()).collect();
    let keys: Vec<&str> = p.iter().map(|x| x.key_id.as_str()).collect();
    let statements: Vec<&str> = p.iter().map(|x| x.statement).collect();
    let devices: Vec<Uuid> = p.iter().map(|x| x.device).collect();
    let first: Vec<i64> = p.iter().map(|x| x.first_seq).collect();
    let counts: Vec<i32> = p.iter().map(|x| x.reading_count).collect();
    let proofs: Vec<&[u8]> = p.iter().map(|x| x.proof.as_slice()).collect();
    let inputs: Vec<&serde_json::Value> = p.iter().map(|x| &x.public_inputs).collect();
    sqlx::query(
        "INSERT INTO zk_proofs (user_id, proof_hash, key_id, statement, device_id, first_seq, reading_count,
                                proof, public_inputs)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::int8[],
                              $7::int4[], $8::bytea[], $9::jsonb[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&users)
    .bind(&hashes)
    .bind(&keys)
    .bind(&statements)
    .bind(&devices)
    .bind(&first)
    .bind(&counts)
    .bind(&proofs)
    .bind(&inputs)
    .execute(&mut **tx)
    .await?;
    let verified: Vec<bool> = p.iter().map(|x| x.verified).collect();
    let reasons: Vec<Option<&str>> = p.iter().map(|x| x.reason.as_deref()).collect();
    sqlx::query(
        "INSERT INTO zk_verifications (user_id, proof_hash, key_id, verifier_name, verified, reason)
         SELECT u, h, k, $4, v, r FROM UNNEST($1::uuid[], $2::text[], $3::text[], $5::bool[], $6::text[])
                AS x(u, h, k, v, r)",
    )
    .bind(&users)
    .bind(&hashes)
    .bind(&keys)
    .bind(verifier_name)
    .bind(&verified)
    .bind(&reasons)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_seq_ranges(tx: &mut Transaction<'_, Postgres>, rows: &[ReadingRow]) -> Result<()> {
    let mut seqs: BTreeMap<Uuid, BTreeSet<i64>> = BTreeMap::new();
    for r in rows {
        seqs.entry(r.device).or_default().insert(r.seq);
    }
    if seqs.is_empty() {
        return Ok(());
    }
    // The devices are locked already (`lock_devices`).
    let ids: Vec<Uuid> = seqs.keys().copied().collect();
    let existing: Vec<(Uuid, i64, i64)> =
        sqlx::query_as("SELECT device_id, lo, hi FROM device_seq_ranges WHERE device_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
    let mut by_device: BTreeMap<Uuid, Vec<(i64, i64)>> = BTreeMap::new();
    for (d, lo, hi) in existing {
        by_device.entry(d).or_default().push((lo, hi));
    }
    let (mut r_dev, mut r_lo, mut r_hi) = (Vec::new(), Vec::new(), Vec::new());
    let (mut d_id, mut d_last, mut d_missing) = (Vec::new(), Vec::new(), Vec::new());
    for (device, new) in &seqs {
        let merged = merge_ranges(by_device.get(device).map_or(&[], Vec::as_slice), new);
        for (lo, hi) in &merged {
            r_dev.push(*device);
            r_lo.push(*lo);
            r_hi.push(*hi);
        }
        d_id.push(*device);
        d_last.push(merged.last().map_or(0, |r| r.1));
        d_missing.push(missing(&merged));
    }
    sqlx::query("DELETE FROM device_seq_ranges WHERE device_id = ANY($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO device_seq_ranges (device_id, lo, hi)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[])",
    )
    .bind(&r_dev)
    .bind(&r_lo)
    .bind(&r_hi)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE iot_devices d
            SET last_seq = s.last, missing_seqs = s.missing, last_sync = now(),
                sync_status = CASE WHEN s.missing > 0 THEN 'GAPS' ELSE 'SYNCED' END
           FROM UNNEST($1::uuid[], $2::int8[], $3::int8[]) AS s(id, last, missing)
          WHERE d.id = s.id",
    )
    .bind(&d_id)
    .bind(&d_last)
    .bind(&d_missing)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Quarantine rows, once per message (topic and payload): a redelivered or
/// repeated message already held is not held twice.
async fn write_quarantine(tx: &mut Transaction<'_, Postgres>, plan: &Plan) -> Result<u64> {
    if !plan.replayed.is_empty() {
        sqlx::query("DELETE FROM rejected_readings WHERE id = ANY($1)")
            .bind(&plan.replayed)
            .execute(&mut **tx)
            .await?;
    }
    let q = &plan.quarantine;
    if q.is_empty() {
        return Ok(0);
    }
    // Text columns refuse NUL: a topic or a reason quoting the input must
    // never be why a message cannot be held.
    let topics: Vec<String> = q.iter().map(|x| without_nul(&x.topic)).collect();
    let gateways: Vec<Option<&str>> = q.iter().map(|x| x.gateway_id.as_deref()).collect();
    let devices: Vec<Option<&str>> = q.iter().map(|x| x.device_id.as_deref()).collect();
    let types: Vec<Option<&str>> = q.iter().map(|x| x.data_type.as_deref()).collect();
    let seqs: Vec<Option<i64>> = q.iter().map(|x| x.seq).collect();
    let reasons: Vec<&str> = q.iter().map(|x| x.reason.code()).collect();
    let details: Vec<String> = q.iter().map(|x| without_nul(&x.detail)).collect();
    let payloads: Vec<&[u8]> = q.iter().map(|x| x.payload.as_ref()).collect();
    let result = sqlx::query(
        "INSERT INTO rejected_readings (topic, gateway_id, device_id, data_type, seq, reason, detail, payload,
                                        payload_sha256)
         SELECT t, g, d, dt, s, r, de, p, encode(sha256(p), 'hex')
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[],
                       $8::bytea[]) AS x(t, g, d, dt, s, r, de, p)
         ON CONFLICT (topic, payload_sha256) DO NOTHING",
    )
    .bind(&topics)
    .bind(&gateways)
    .bind(&devices)
    .bind(&types)
    .bind(&seqs)
    .bind(&reasons)
    .bind(&details)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

/// `s` with every NUL character replaced by U+FFFD.
fn without_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_count_holes() {
        let s = |v: &[i64]| v.iter().copied().collect::<BTreeSet<i64>>();
        assert_eq!(merge_ranges(&[], &s(&[1, 2, 3])), vec![(1, 3)]);
        let r = merge_ranges(&[(1, 3)], &s(&[4, 7, 8]));
        assert_eq!(r, vec![(1, 4), (7, 8)]);
        assert_eq!(missing(&r), 2);
        // Late arrivals fill the hole; duplicates change nothing.
        let r = merge_ranges(&r, &s(&[5, 6, 2]));
        assert_eq!(r, vec![(1, 8)]);
        assert_eq!(missing(&r), 0);
    }
}
