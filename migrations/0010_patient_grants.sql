-- Grants in the patient's hands (issue 20): through the API a patient gives
-- a clinician access to their own data and revokes it. The API checks the
-- caller is a patient; these rows are the database's own word on it, so a
-- bug in the API cannot give or revoke anyone else's grant.
--
-- A patient inserts grants from itself to a clinician (never to another
-- patient or to itself), and may set revoked_at on its own grants — no other
-- column, no delete: a grant's history stays for the audit.
GRANT INSERT (patient_id, clinician_id, data_types, expires_at) ON care_grants TO hailan_patient;
GRANT UPDATE (revoked_at) ON care_grants TO hailan_patient;

CREATE POLICY care_grants_patient_gives ON care_grants
  FOR INSERT TO hailan_patient
  WITH CHECK (
    patient_id = hailan_current_user()
    AND EXISTS (SELECT 1 FROM users u WHERE u.id = clinician_id AND u.user_kind = 'CLINICIAN')
  );

CREATE POLICY care_grants_patient_revokes ON care_grants
  FOR UPDATE TO hailan_patient
  USING (patient_id = hailan_current_user())
  WITH CHECK (patient_id = hailan_current_user() AND revoked_at IS NOT NULL);
