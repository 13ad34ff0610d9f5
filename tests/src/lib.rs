//! hailan-tests: helpers shared by the end-to-end and database tests.
//! Tests need the services `cargo xtask services` starts (`DATABASE_URL`).
