//! GATT codecs for the Bluetooth SIG health profiles (the GATT issue fills this).
