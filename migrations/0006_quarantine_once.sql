-- A message is quarantined once: the broker redelivers a message whose
-- acknowledgement was lost (ingest killed after its batch committed, a
-- connection dropped before the PUBACK), and a forger may repeat the same
-- bytes. Same topic and same payload = the same message (DESIGN §7: the
-- unique key absorbs redelivery, here as for health_data).
DELETE FROM rejected_readings r
 USING rejected_readings older
 WHERE r.topic = older.topic
   AND r.payload_sha256 = older.payload_sha256
   AND (older.received_at, older.id) < (r.received_at, r.id);
CREATE UNIQUE INDEX rejected_readings_message_key ON rejected_readings (topic, payload_sha256);
