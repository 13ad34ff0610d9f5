//! The zero-knowledge statement, prover and verifier (the zk issue fills this).
