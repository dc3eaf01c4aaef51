-- embq schema v4 for PostgreSQL: keep a vector in its row.
--
-- A 1,536-float vector is about 6 KB, above PostgreSQL's default 2 KB TOAST threshold: each
-- write tried to compress it (model output does not compress) and then split it into four
-- chunks in the TOAST table, each with its own index entry. Rows up to a page now stay inline,
-- so storing a vector writes one heap tuple; larger vectors still go out of line, without the
-- futile compression attempt. Measured: 1.8x the claim-and-finish throughput at 1,536
-- dimensions (BENCHMARKS.md, "Queue throughput"). Applies to rows written from now on.

ALTER TABLE embq.embeddings SET (toast_tuple_target = 8160);
ALTER TABLE embq.embeddings ALTER COLUMN embedding SET STORAGE EXTERNAL;
