-- pairings: one row per pairing in `candidates`, newest first.
-- k is the largest rank kept (null for exhaustive); n_generated / n_train count the distinct images
-- among its candidates; last_run_at is when its latest rows were written.
CREATE OR REPLACE VIEW pairings AS
SELECT
    c.pairing_id,
    any_value(c.method) AS method,
    any_value(c.embedder) AS embedder,
    max(c.rank) AS k,
    count(DISTINCT c.generated_image_id) AS n_generated,
    count(DISTINCT c.train_image_id) AS n_train,
    count(*) AS n_pairs,
    max(r.started_at) AS last_run_at
FROM candidates c
LEFT JOIN runs r USING (run_id)
GROUP BY c.pairing_id
ORDER BY last_run_at DESC NULLS LAST, c.pairing_id;

-- embedding_sets: what `embeddings` holds per embedder configuration.
CREATE OR REPLACE VIEW embedding_sets AS
SELECT
    embedder,
    params_hash,
    any_value(dim) AS dim,
    count(*) FILTER (WHERE status = 'ok') AS n_ok,
    count(*) FILTER (WHERE status = 'error') AS n_error
FROM embeddings
GROUP BY embedder, params_hash
ORDER BY embedder, params_hash;
