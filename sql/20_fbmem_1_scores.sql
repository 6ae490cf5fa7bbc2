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

-- Every stored scoring configuration with what it is, most recent first; chosen marks the one the views
-- above use (the rule: the scoring_id variable, else the configuration whose latest run started last).
CREATE OR REPLACE VIEW scoring_configurations AS
SELECT s.scoring_id,
       any_value(s.metric) AS metric,
       any_value(s.size) AS size,
       any_value(s.segmenter) AS segmenter,
       any_value(s.preset) AS preset,
       count(*) AS pairs,
       count(*) FILTER (WHERE s.status = 'ok') AS ok_pairs,
       max(r.started_at) AS last_run,
       s.scoring_id = (SELECT scoring_id FROM fbmem_scoring_choice) AS chosen
  FROM region_scores s
  LEFT JOIN runs r USING (run_id)
 GROUP BY s.scoring_id
 ORDER BY last_run DESC NULLS LAST, s.scoring_id DESC;
