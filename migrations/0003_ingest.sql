-- What the ingestion service needs beyond the seed tables (ingest issue).

-- Per-device sequence numbers received, as merged ranges [lo, hi]. Holes
-- between ranges are readings a device (or gateway) sent that never arrived:
-- the data-completeness view of DESIGN §7. Kept small: a device with no gaps
-- has one row.
CREATE TABLE device_seq_ranges (
  device_id UUID NOT NULL REFERENCES iot_devices(id) ON DELETE CASCADE,
  lo BIGINT NOT NULL,
  hi BIGINT NOT NULL CHECK (hi >= lo),
  PRIMARY KEY (device_id, lo)
);

ALTER TABLE iot_devices ADD COLUMN missing_seqs BIGINT NOT NULL DEFAULT 0;

-- Bearer tokens for the clinician API, stored as SHA-256 hashes.
CREATE TABLE api_tokens (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  token_sha256 CHAR(64) NOT NULL UNIQUE,
  label VARCHAR(100),
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
  revoked_at TIMESTAMP WITH TIME ZONE
);

GRANT SELECT, INSERT, UPDATE, DELETE ON device_seq_ranges TO hailan_ingest;
-- Replaying quarantine (e.g. readings that arrived before their device's
-- registration) reads and removes rows. Payloads hold sealed values only.
GRANT SELECT, DELETE ON rejected_readings TO hailan_ingest;

-- The owner role (admin CLI, auditors' tools) reads stored proofs to re-verify them.
CREATE POLICY zk_proofs_owner ON zk_proofs FOR SELECT TO CURRENT_USER USING (true);
