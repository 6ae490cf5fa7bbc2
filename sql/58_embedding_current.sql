-- One embedding configuration per embedder, for the views that compare images by embeddings (NeMo's
-- SSCD/CLIP memorization and diversity figures, the NeMo-C transfer's embedding similarity): the
-- `embedding_params` variable (an embeddings.params_hash) when set, else per embedder the configuration
-- with the most ok vectors. Vectors are unit length (schemas/embeddings.json), so a dot product is a cosine.
CREATE OR REPLACE VIEW embedding_current AS
WITH choice AS (
    SELECT embedder,
           coalesce(TRY_CAST(getvariable('embedding_params') AS VARCHAR),
                    arg_max(params_hash, {'n': n, 'params_hash': params_hash})) AS params_hash
      FROM (SELECT embedder, params_hash, count(*) AS n FROM embeddings WHERE status = 'ok' GROUP BY ALL)
     GROUP BY embedder
)
SELECT e.image_id, e.embedder, e.params_hash, e.vector
  FROM embeddings e
  JOIN choice c USING (embedder, params_hash)
 WHERE e.status = 'ok';
