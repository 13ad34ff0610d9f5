-- Keys ready for Citus (SCALING.md): every primary and unique key of a table
-- that would be distributed by user_id contains user_id. zk_verifications,
-- written once per verified proof, is such a table; its key was (id) alone.
ALTER TABLE zk_verifications DROP CONSTRAINT zk_verifications_pkey;
ALTER TABLE zk_verifications ADD PRIMARY KEY (user_id, id);
