-- Shared devices (issue 19): each user slot of a family scale or cuff is a
-- device of its own (its own id, commitment and seq line, under its own
-- patient) on the same hardware, so it shares the shared device's
-- Bluetooth address. shared_device_id names that device (WIRE.md §2.2
-- `user_slot_of`); the address stays unique per gateway among devices of
-- their own only.
ALTER TABLE iot_devices ADD COLUMN shared_device_id VARCHAR(255);
ALTER TABLE iot_devices DROP CONSTRAINT iot_devices_gateway_id_bluetooth_address_key;
CREATE UNIQUE INDEX iot_devices_gateway_address ON iot_devices (gateway_id, bluetooth_address)
  WHERE shared_device_id IS NULL;
