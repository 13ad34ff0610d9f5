-- hailan: the (user_id, zk_proof_hash) index goes. Its one reader, the API
-- looking up the other readings of a window cut by a time range, now finds
-- them by device and seq range through the readings' unique key
-- (user_id, device_id, data_type, seq). The index cost every insert a
-- B-tree entry with a 64-character key — the largest of health_data's
-- indexes — and ingest's write rate is PostgreSQL-bound.
DROP INDEX IF EXISTS idx_health_data_proof;
