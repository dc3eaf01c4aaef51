-- embq schema v5 for PostgreSQL: find a key's running jobs.
--
-- A claim completes a job on the spot when its text's vector is already stored. That is only
-- right if no older job for the same key is still running: that job would store its (other)
-- text's vector afterwards, over the newest text's. The claim now checks for one, through this
-- index; it holds only running jobs, so it stays as small as the work in flight.
--
-- Building it scans the whole table once under a lock that holds back enqueues and claims (a
-- migration runs in one transaction, where CONCURRENTLY is not allowed): on a table with many
-- millions of finished jobs, run `embq migrate` when a pause of that scan's length is acceptable.

CREATE INDEX IF NOT EXISTS jobs_running_key_idx ON embq.jobs (source_type, source_id, content_type)
    WHERE state = 'running';
