-- hailan schema (DESIGN §6). Tables and column names follow the HaiLan Pro
-- seed (shared/seeds/000_…, §2.1.1 users, §2.5 iot_devices / health_data,
-- §4.1 RLS, §5.2 partitioning); additions are marked "hailan:".
-- gen_random_uuid() (built in since PostgreSQL 13) replaces the seed's
-- uuid_generate_v4() so no extension is needed.

CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at = NOW();
  RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------- users (seed 2.1.1)
CREATE TABLE users (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  did VARCHAR(255) UNIQUE NOT NULL,
  did_public_key TEXT,
  email VARCHAR(255) UNIQUE,
  email_hash VARCHAR(64),
  phone VARCHAR(50) UNIQUE,
  phone_hash VARCHAR(64),
  privacy_level VARCHAR(20) DEFAULT 'STANDARD' CHECK (privacy_level IN ('STANDARD', 'STEALTH', 'DISGUISE')),
  privacy_settings JSONB DEFAULT '{}',
  status VARCHAR(20) DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED', 'DELETED')),
  email_verified BOOLEAN DEFAULT false,
  phone_verified BOOLEAN DEFAULT false,
  preferences JSONB DEFAULT '{}',
  language VARCHAR(10) DEFAULT 'zh-CN',
  timezone VARCHAR(50) DEFAULT 'Asia/Shanghai',
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  last_active TIMESTAMP WITH TIME ZONE,
  deleted_at TIMESTAMP WITH TIME ZONE,
  ipfs_profile_cid VARCHAR(255),
  -- hailan: what the account is, and a name to show clinicians.
  user_kind VARCHAR(20) NOT NULL DEFAULT 'PATIENT' CHECK (user_kind IN ('PATIENT', 'CLINICIAN', 'AUDITOR', 'ADMIN')),
  display_name VARCHAR(100),
  CONSTRAINT valid_email_format CHECK (email ~* '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Z|a-z]{2,}$' OR email IS NULL),
  CONSTRAINT valid_phone_format CHECK (phone ~ '^1[3-9][0-9]{9}$' OR phone IS NULL)
);
CREATE INDEX idx_users_email_hash ON users(email_hash);
CREATE INDEX idx_users_phone_hash ON users(phone_hash);
CREATE INDEX idx_users_status ON users(status);
CREATE INDEX idx_users_last_active ON users(last_active DESC);
CREATE INDEX idx_users_created_at ON users(created_at DESC);
CREATE TRIGGER update_users_updated_at BEFORE UPDATE ON users
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- ---------------------------------------------------------------- gateways (hailan)
-- One row per edge gateway; id is its MQTT user name and topic segment.
CREATE TABLE gateways (
  id VARCHAR(64) PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,64}$'),
  owner_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name VARCHAR(100),
  status VARCHAR(20) NOT NULL DEFAULT 'UNKNOWN' CHECK (status IN ('UNKNOWN', 'ONLINE', 'OFFLINE')),
  last_seen TIMESTAMP WITH TIME ZONE,
  revoked_at TIMESTAMP WITH TIME ZONE,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE INDEX idx_gateways_owner_id ON gateways(owner_id);
CREATE TRIGGER update_gateways_updated_at BEFORE UPDATE ON gateways
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- ---------------------------------------------------------------- iot_devices (seed 2.5.1)
CREATE TABLE iot_devices (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  device_id VARCHAR(255) UNIQUE NOT NULL,
  device_name VARCHAR(100),
  device_type VARCHAR(50) NOT NULL,
  -- Seed: UNIQUE (bluetooth_address). hailan: unique per gateway, so a device
  -- re-paired on another gateway is a new registration, not a conflict.
  bluetooth_address VARCHAR(50),
  firmware_version VARCHAR(50),
  hardware_version VARCHAR(50),
  last_sync TIMESTAMP WITH TIME ZONE,
  battery_level INT CHECK (battery_level BETWEEN 0 AND 100),
  is_active BOOLEAN DEFAULT true,
  settings JSONB DEFAULT '{}',
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  -- hailan:
  gateway_id VARCHAR(64) NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
  manufacturer VARCHAR(100),
  model VARCHAR(100),
  serial_number VARCHAR(100),
  data_types TEXT[] NOT NULL DEFAULT '{}',
  -- D = Poseidon(tag_dev, s), pinned at registration (DESIGN §5.2).
  zk_device_commitment BYTEA NOT NULL CHECK (octet_length(zk_device_commitment) = 32),
  last_seq BIGINT,
  sync_status VARCHAR(20) NOT NULL DEFAULT 'PENDING' CHECK (sync_status IN ('PENDING', 'SYNCED', 'GAPS', 'STALE')),
  connection_state VARCHAR(20) NOT NULL DEFAULT 'UNKNOWN' CHECK (connection_state IN ('UNKNOWN', 'CONNECTED', 'DISCONNECTED')),
  rssi SMALLINT,
  state_observed_at TIMESTAMP WITH TIME ZONE,
  UNIQUE (gateway_id, bluetooth_address)
);
CREATE INDEX idx_iot_devices_user_id ON iot_devices(user_id);
CREATE INDEX idx_iot_devices_gateway_id ON iot_devices(gateway_id);
CREATE TRIGGER update_iot_devices_updated_at BEFORE UPDATE ON iot_devices
  FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- ---------------------------------------------------------------- zk_proofs (hailan)
-- Each proof is stored once (a window's readings share one), with its public
-- inputs and key id, so anyone can re-verify it (DESIGN §6).
CREATE TABLE zk_proofs (
  id UUID NOT NULL DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  proof_hash CHAR(64) NOT NULL,           -- hex SHA-256 of the proof bytes
  key_id CHAR(64) NOT NULL,               -- hex SHA-256 of the verifying key
  statement VARCHAR(20) NOT NULL CHECK (statement IN ('reading', 'window')),
  device_id UUID REFERENCES iot_devices(id) ON DELETE SET NULL,
  first_seq BIGINT NOT NULL,
  reading_count INT NOT NULL CHECK (reading_count > 0),
  proof BYTEA NOT NULL,
  public_inputs JSONB NOT NULL,           -- decimal field elements, in circuit order
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  PRIMARY KEY (user_id, id),
  UNIQUE (user_id, proof_hash)
);

-- ---------------------------------------------------------------- health_data (seed 2.5.2, 5.2)
-- LIST-partitioned by data_type, one level only (Citus cannot distribute
-- multi-level partitioning). Every key includes user_id (the future
-- distribution column) and data_type (the partition column).
CREATE TABLE health_data (
  id UUID NOT NULL DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  device_id UUID REFERENCES iot_devices(id) ON DELETE SET NULL,
  data_type VARCHAR(50) NOT NULL,
  value JSONB NOT NULL,                   -- the SEALED value (kid, nonce, ciphertext); never plaintext
  unit VARCHAR(50),
  recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
  zk_proof_hash VARCHAR(255),             -- hex SHA-256 of the proof covering this reading
  verified BOOLEAN NOT NULL DEFAULT false,
  ipfs_data_cid VARCHAR(255),
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  -- hailan:
  seq BIGINT NOT NULL,
  verified_at TIMESTAMP WITH TIME ZONE,
  gateway_id VARCHAR(64) NOT NULL,
  reading_commitment BYTEA CHECK (octet_length(reading_commitment) = 32),
  PRIMARY KEY (user_id, data_type, id),
  -- Redelivery of a reading is a no-op (DESIGN §7).
  CONSTRAINT health_data_reading_key UNIQUE (user_id, device_id, data_type, seq)
) PARTITION BY LIST (data_type);

CREATE TABLE health_data_heart_rate PARTITION OF health_data FOR VALUES IN ('HEART_RATE');
CREATE TABLE health_data_blood_pressure PARTITION OF health_data FOR VALUES IN ('BLOOD_PRESSURE');
CREATE TABLE health_data_spo2 PARTITION OF health_data FOR VALUES IN ('SPO2');
CREATE TABLE health_data_body_temperature PARTITION OF health_data FOR VALUES IN ('BODY_TEMPERATURE');
CREATE TABLE health_data_glucose PARTITION OF health_data FOR VALUES IN ('GLUCOSE');
CREATE TABLE health_data_body_weight PARTITION OF health_data FOR VALUES IN ('BODY_WEIGHT');
-- An unknown data type is stored, never refused.
CREATE TABLE health_data_default PARTITION OF health_data DEFAULT;

-- Created on the parent, so every partition gets its own.
CREATE INDEX idx_health_data_user_recorded ON health_data (user_id, recorded_at DESC);
CREATE INDEX idx_health_data_recorded_brin ON health_data USING brin (recorded_at);
CREATE INDEX idx_health_data_device_id ON health_data (device_id);
CREATE INDEX idx_health_data_proof ON health_data (user_id, zk_proof_hash);

-- ---------------------------------------------------------------- zk_verifications (seed 4.1)
-- Who verified which proof, when, with which key and what result: the ingest
-- process at write time (one row per proof), and any clinician or auditor who
-- re-verifies later. data_id names one reading when the check was about one.
CREATE TABLE zk_verifications (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  data_id UUID,
  proof_hash CHAR(64) NOT NULL,
  key_id CHAR(64) NOT NULL,
  verifier_id UUID REFERENCES users(id) ON DELETE SET NULL,  -- NULL: a service
  verifier_name VARCHAR(100) NOT NULL,                      -- e.g. ingest process id, or user did
  verified BOOLEAN NOT NULL,
  reason TEXT,
  verified_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_zk_verifications_proof ON zk_verifications (user_id, proof_hash);

-- ---------------------------------------------------------------- care_grants (hailan)
-- A patient lets a clinician read some (or all: data_types NULL) data types.
CREATE TABLE care_grants (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  patient_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  clinician_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  data_types TEXT[],
  granted_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  expires_at TIMESTAMP WITH TIME ZONE,
  revoked_at TIMESTAMP WITH TIME ZONE,
  CHECK (patient_id <> clinician_id)
);
CREATE INDEX idx_care_grants_clinician ON care_grants (clinician_id, patient_id);

-- ---------------------------------------------------------------- rejected_readings (hailan)
-- Quarantine: nothing is dropped. The raw payload is kept with a reason code
-- and a human-readable detail.
CREATE TABLE rejected_readings (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  received_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  topic TEXT NOT NULL,
  gateway_id VARCHAR(64),
  device_id VARCHAR(255),
  data_type VARCHAR(50),
  seq BIGINT,
  reason VARCHAR(64) NOT NULL,
  detail TEXT NOT NULL,
  payload BYTEA NOT NULL,
  payload_sha256 CHAR(64) NOT NULL
);
CREATE INDEX idx_rejected_readings_received ON rejected_readings (received_at DESC);
CREATE INDEX idx_rejected_readings_gateway ON rejected_readings (gateway_id, received_at DESC);

-- ---------------------------------------------------------------- audit_logs (hailan)
-- Every clinician read, written in the same transaction as the read.
CREATE TABLE audit_logs (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  actor_id UUID REFERENCES users(id) ON DELETE SET NULL,
  actor_kind VARCHAR(20) NOT NULL,
  patient_id UUID,
  action VARCHAR(64) NOT NULL,
  resource TEXT NOT NULL,
  row_count INT NOT NULL DEFAULT 0,
  detail JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_audit_logs_patient ON audit_logs (patient_id, at DESC);
CREATE INDEX idx_audit_logs_actor ON audit_logs (actor_id, at DESC);
