-- hailan: the BODY_COMPOSITION partition (Body Composition Service 0x181B,
-- measurement 0x2A9C; proto/src/data_type.rs). One level, like the others.
--
-- A gateway may have sent BODY_COMPOSITION before this migration: ingest
-- stored those readings, unverified, in the DEFAULT partition (an unknown
-- type is stored, never refused). PostgreSQL refuses to add a partition
-- whose values the DEFAULT partition already holds, so they are moved into
-- the new table first, then it is attached. Indexes, keys and constraints
-- are defined on the parent and follow on ATTACH; RLS and privileges stay on
-- the parent only (0002): nothing is granted on the partition.
CREATE TABLE health_data_body_composition
  (LIKE health_data INCLUDING DEFAULTS INCLUDING CONSTRAINTS);

WITH moved AS (
  DELETE FROM health_data_default WHERE data_type = 'BODY_COMPOSITION' RETURNING *
)
INSERT INTO health_data_body_composition SELECT * FROM moved;

ALTER TABLE health_data
  ATTACH PARTITION health_data_body_composition FOR VALUES IN ('BODY_COMPOSITION');
