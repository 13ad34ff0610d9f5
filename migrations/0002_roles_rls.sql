-- Roles and Row Level Security (DESIGN §6, seed §4.1).
--
-- Group roles (NOLOGIN); a login role is made a member of exactly the one it
-- needs. The clinician API connects with a login that is a member of
-- hailan_api and, per transaction, runs
--   SET LOCAL ROLE hailan_clinician;  -- or hailan_patient
--   SELECT set_config('hailan.user_id', '<uuid>', true);
-- so PostgreSQL, not Rust, decides which rows a caller sees.
--
-- PostgreSQL facts this relies on (FACTS.md, and checked by tests/tests/schema.rs):
-- * A bare ON CONFLICT DO NOTHING works with INSERT privilege alone. Naming a
--   conflict target needs SELECT on those columns AND, with RLS forced, a
--   SELECT policy that admits the new row. Ingest gets neither: it never
--   selects from health_data at all, and writes with a bare ON CONFLICT DO
--   NOTHING (the only other unique key is the random primary key, so the
--   reading key (user_id, device_id, data_type, seq) is what absorbs
--   redelivery).
-- * RLS on a partitioned parent does not apply when a partition is queried
--   directly: privileges are granted on the parent only, never on partitions.

-- Roles are cluster-wide, so another database's migration may be creating or
-- changing them at the same moment: every step is conditional, and a lost race
-- on creation is ignored (ALTER/GRANT on a role row that another transaction
-- is updating would fail with "tuple concurrently updated").
DO $$
DECLARE r TEXT;
BEGIN
  FOREACH r IN ARRAY ARRAY['hailan_ingest', 'hailan_api', 'hailan_clinician', 'hailan_patient'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN', r);
      EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL; -- another database created it first
      END;
    END IF;
  END LOOP;
  -- The API may act as a clinician or as a patient, nothing else — and only
  -- after SET ROLE: NOINHERIT means forgetting it reads nothing rather than
  -- the union of both roles' rows.
  IF (SELECT rolinherit FROM pg_roles WHERE rolname = 'hailan_api') THEN
    ALTER ROLE hailan_api NOINHERIT;
  END IF;
  FOREACH r IN ARRAY ARRAY['hailan_clinician', 'hailan_patient'] LOOP
    IF NOT pg_has_role('hailan_api', r, 'MEMBER') THEN
      EXECUTE format('GRANT %I TO hailan_api', r);
    END IF;
  END LOOP;
  -- The migrating (owner) role may assume every role; the dev set-up and the
  -- tests connect as the owner and SET ROLE.
  FOREACH r IN ARRAY ARRAY['hailan_ingest', 'hailan_api', 'hailan_clinician', 'hailan_patient'] LOOP
    IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
      EXECUTE format('GRANT %I TO %I', r, current_user);
    END IF;
  END LOOP;
END
$$;

-- The caller's identity for this transaction, or NULL.
CREATE OR REPLACE FUNCTION hailan_current_user() RETURNS UUID
LANGUAGE sql STABLE AS $$
  SELECT NULLIF(current_setting('hailan.user_id', true), '')::uuid
$$;

-- ---------------------------------------------------------------- ingest
GRANT SELECT ON gateways TO hailan_ingest;
GRANT UPDATE (status, last_seen) ON gateways TO hailan_ingest;
GRANT SELECT, INSERT, UPDATE ON iot_devices TO hailan_ingest;
GRANT INSERT ON health_data TO hailan_ingest;
GRANT INSERT ON zk_proofs TO hailan_ingest;
GRANT INSERT ON zk_verifications TO hailan_ingest;
GRANT INSERT ON rejected_readings TO hailan_ingest;

-- ---------------------------------------------------------------- API, clinicians, patients
GRANT INSERT ON audit_logs TO hailan_clinician, hailan_patient;
GRANT SELECT ON health_data, iot_devices, care_grants, zk_proofs TO hailan_clinician, hailan_patient;
GRANT SELECT (id, did, display_name, user_kind) ON users TO hailan_clinician, hailan_patient;
GRANT INSERT ON zk_verifications TO hailan_clinician, hailan_patient;

-- An active grant from `patient` to the current clinician covering `data_type`
-- (any data type when `data_type` is NULL).
-- (Used inside policies; runs with the caller's rights, so care_grants' own
-- policy applies as well.)
CREATE OR REPLACE FUNCTION hailan_grant_active(patient UUID, data_type TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
  SELECT EXISTS (
    SELECT 1 FROM care_grants g
    WHERE g.patient_id = patient
      AND g.clinician_id = hailan_current_user()
      AND g.revoked_at IS NULL
      AND (g.expires_at IS NULL OR g.expires_at > now())
      AND (data_type IS NULL OR g.data_types IS NULL OR data_type = ANY (g.data_types))
  )
$$;

-- ---------------------------------------------------------------- health_data
ALTER TABLE health_data ENABLE ROW LEVEL SECURITY;
ALTER TABLE health_data FORCE ROW LEVEL SECURITY;

CREATE POLICY health_data_ingest_insert ON health_data
  FOR INSERT TO hailan_ingest WITH CHECK (true);

CREATE POLICY health_data_patient_own ON health_data
  FOR SELECT TO hailan_patient
  USING (user_id = hailan_current_user());

-- Seed §4.1: readable after ZK verification. hailan: and only under an active grant.
CREATE POLICY health_data_clinician_granted ON health_data
  FOR SELECT TO hailan_clinician
  USING (verified AND hailan_grant_active(user_id, data_type));

-- ---------------------------------------------------------------- iot_devices
ALTER TABLE iot_devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE iot_devices FORCE ROW LEVEL SECURITY;
CREATE POLICY iot_devices_ingest ON iot_devices
  FOR ALL TO hailan_ingest USING (true) WITH CHECK (true);
CREATE POLICY iot_devices_patient_own ON iot_devices
  FOR SELECT TO hailan_patient USING (user_id = hailan_current_user());
CREATE POLICY iot_devices_clinician_granted ON iot_devices
  FOR SELECT TO hailan_clinician USING (hailan_grant_active(user_id, NULL));
-- The owner role (migrations, admin CLI) manages devices.
CREATE POLICY iot_devices_owner ON iot_devices
  FOR ALL TO CURRENT_USER USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------- zk_proofs
ALTER TABLE zk_proofs ENABLE ROW LEVEL SECURITY;
ALTER TABLE zk_proofs FORCE ROW LEVEL SECURITY;
CREATE POLICY zk_proofs_ingest ON zk_proofs
  FOR INSERT TO hailan_ingest WITH CHECK (true);
CREATE POLICY zk_proofs_patient_own ON zk_proofs
  FOR SELECT TO hailan_patient USING (user_id = hailan_current_user());
CREATE POLICY zk_proofs_clinician_granted ON zk_proofs
  FOR SELECT TO hailan_clinician USING (hailan_grant_active(user_id, NULL));

-- ---------------------------------------------------------------- care_grants
ALTER TABLE care_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY care_grants_party ON care_grants
  FOR SELECT TO hailan_clinician, hailan_patient
  USING (clinician_id = hailan_current_user() OR patient_id = hailan_current_user());

-- ---------------------------------------------------------------- audit_logs
ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_logs_write_own ON audit_logs
  FOR INSERT TO hailan_clinician, hailan_patient
  WITH CHECK (actor_id = hailan_current_user());
