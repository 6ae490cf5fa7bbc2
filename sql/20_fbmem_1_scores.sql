-- FB-Mem scores of ONE scoring configuration (views below build on it).
-- Which one: the DuckDB variable scoring_id when set (fbmem sql -p scoring_id ID ...), else the
-- configuration whose latest run started last (ties: the larger scoring_id). Only ok rows.
CREATE OR REPLACE VIEW fbmem_scoring_choice AS
SELECT coalesce(
    CAST(getvariable('scoring_id') AS VARCHAR),
    (SELECT s.scoring_id
       FROM region_scores s LEFT JOIN runs r USING (run_id)
      GROUP BY s.scoring_id
      ORDER BY max(r.started_at) DESC NULLS LAST, s.scoring_id DESC
      LIMIT 1)
) AS scoring_id;

CREATE OR REPLACE VIEW fbmem_scores AS
SELECT s.*
  FROM region_scores s
  JOIN fbmem_scoring_choice c USING (scoring_id)
 WHERE s.status = 'ok';
