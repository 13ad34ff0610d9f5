-- The clinician API (api issue): token log-in, and what clinicians and
-- patients may read beyond 0002 (device sequence gaps).

-- Log in with an API token: the hex SHA-256 of the bearer token (tokens are
-- stored hashed, `admin token`). Returns the user and kind of an unexpired,
-- unrevoked token of an active user, and sets the transaction's identity
-- (`hailan.user_id`, transaction-local) itself, so the identity every policy
-- reads comes from the token table, not from a value the API passes on.
-- SECURITY DEFINER: the API's role cannot read api_tokens; it may only call this.
CREATE OR REPLACE FUNCTION hailan_api_login(token_hash TEXT)
RETURNS TABLE (user_id UUID, user_kind TEXT)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  u UUID;
  k TEXT;
BEGIN
  SELECT t.user_id, us.user_kind INTO u, k
    FROM api_tokens t JOIN users us ON us.id = t.user_id
   WHERE t.token_sha256 = token_hash
     AND t.revoked_at IS NULL
     AND t.expires_at > now()
     AND us.status = 'ACTIVE';
  IF u IS NULL THEN
    RETURN;
  END IF;
  PERFORM set_config('hailan.user_id', u::text, true);
  user_id := u;
  user_kind := k;
  RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION hailan_api_login(TEXT) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hailan_api_login(TEXT) TO hailan_api;

-- Known data gaps: the per-device received ranges, readable by whoever may
-- read the device (the subquery is itself filtered by iot_devices' policies).
ALTER TABLE device_seq_ranges ENABLE ROW LEVEL SECURITY;
CREATE POLICY device_seq_ranges_ingest ON device_seq_ranges
  FOR ALL TO hailan_ingest USING (true) WITH CHECK (true);
CREATE POLICY device_seq_ranges_readers ON device_seq_ranges
  FOR SELECT TO hailan_clinician, hailan_patient
  USING (EXISTS (SELECT 1 FROM iot_devices d WHERE d.id = device_seq_ranges.device_id));
GRANT SELECT ON device_seq_ranges TO hailan_clinician, hailan_patient;
