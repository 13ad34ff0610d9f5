-- Shared devices (issue 19): one gateway may serve several patients of a
-- household — a scale or cuff with User Data Service user slots, each slot
-- mapped by the owner to one patient. A registration that names a patient
-- (WIRE.md §2.2 `patient`) is accepted only if the gateway is enrolled for
-- them here (`hailan-ingest admin enrol-gateway GW --owner O --patient P`);
-- the gateway's owner is always one of its patients (gateways.owner_id).
CREATE TABLE gateway_patients (
  gateway_id VARCHAR(64) NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  enrolled_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  PRIMARY KEY (gateway_id, user_id)
);
CREATE INDEX idx_gateway_patients_user_id ON gateway_patients(user_id);

-- Ingest resolves a registration's patient DID against the sender's
-- enrolment: it reads both, and nothing else of users.
GRANT SELECT ON gateway_patients TO hailan_ingest;
GRANT SELECT (id, did) ON users TO hailan_ingest;
