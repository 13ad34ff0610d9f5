-- hailan: truthful link state (issue 18). A device is shown CONNECTED only
-- while its gateway is online and its state is fresh.
--
-- Ingest follows every gateway's retained status topic
-- (hailan/v1/{gateway}/status: `online`, or `offline` — its last will and
-- what it says on a clean stop). On `offline` at time T it marks every device
-- of that gateway connection_state 'UNKNOWN' as of T (state_observed_at = T,
-- so a device state observed before T never overwrites it: ingest keeps the
-- state with the latest observed time) and records T as the gateway's
-- offline_since and the devices' gateway_offline_since; `online` clears both.
--
-- gateway_offline_since is kept on iot_devices as well as on gateways so that
-- clinicians and patients read it through iot_devices' own policies (0002,
-- 0004): no new table, no new policy, and gateways stays unreadable to them.
ALTER TABLE gateways ADD COLUMN offline_since TIMESTAMP WITH TIME ZONE;
ALTER TABLE iot_devices ADD COLUMN gateway_offline_since TIMESTAMP WITH TIME ZONE;
-- The device refused its bond and gets no link until the owner pairs it
-- again (from the gateway's device state; NULL: the gateway did not say).
ALTER TABLE iot_devices ADD COLUMN needs_repair BOOLEAN;

-- Ingest already updates gateways (status, last_seen) and iot_devices.
GRANT UPDATE (offline_since) ON gateways TO hailan_ingest;
