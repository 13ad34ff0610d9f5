#!/usr/bin/env python3
"""Seed fuzz/corpus/gatt_* from proto/vectors/gatt.json."""
import json, os, pathlib

here = pathlib.Path(__file__).resolve().parent
vectors = json.loads((here / "../proto/vectors/gatt.json").read_text())
target = {"2A37": "heart_rate", "2A38": "body_sensor_location", "2A35": "blood_pressure",
          "2A36": "cuff_pressure", "2A1C": "temperature", "2A1D": "temperature_type",
          "2A1E": "intermediate_temperature", "2A18": "glucose", "2A34": "glucose_context",
          "2A52": "racp", "2A5E": "plx_spot_check", "2A5F": "plx_continuous", "2A9D": "weight",
          "2A9C": "body_composition",
          "2A19": "battery", "2A29": "device_info_string", "2A24": "device_info_string",
          "2A25": "device_info_string", "2A27": "device_info_string", "2A26": "device_info_string",
          "2A28": "device_info_string", "2A50": "pnp_id", "2A08": "date_time", "2A2B": "current_time"}
# Order of hailan_proto::gatt::Characteristic::ALL (gatt_any's first byte).
all_order = ["2A37", "2A38", "2A35", "2A36", "2A1C", "2A1D", "2A1E", "2A18", "2A34", "2A52", "2A5E",
             "2A5F", "2A9D", "2A9C", "2A19", "2A29", "2A24", "2A25", "2A27", "2A26", "2A28", "2A50", "2A08", "2A2B"]
for i, v in enumerate(vectors):
    uuid, data = v["characteristic_uuid"].upper(), bytes.fromhex(v["hex"])
    for name, blob in ((f"gatt_{target[uuid]}", data), ("gatt_any", bytes([all_order.index(uuid)]) + data)):
        d = here / "corpus" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"vector{i}").write_bytes(blob)
print(f"seeded {len(vectors)} vectors")
