-- Views behind `fbmem report` (fbmem_data.report). They read the FB-Mem views (sql/20_fbmem_*.sql), so
-- the variables scoring_id, tau and k choose the scoring configuration, threshold and top-k depth.

-- Which configuration produced the labels: segmenter, metric, preset, size, mask settings and the runs
-- that wrote the scores (one row; no rows when nothing is scored).
CREATE OR REPLACE VIEW report_provenance AS
SELECT s.scoring_id,
       string_agg(DISTINCT s.segmenter, ', ') AS segmenter,
       string_agg(DISTINCT s.metric, ', ') AS metric,
       string_agg(DISTINCT s.preset, ', ') AS preset,
       min(s.size) AS size,
       string_agg(DISTINCT s.mask_params_hash, ', ') AS mask_params_hash,
       coalesce(CAST(getvariable('tau') AS DOUBLE), 0.8) AS tau,
       count(*) AS scored_pairs,
       count(DISTINCT s.generated_image_id) AS generated_images,
       count(DISTINCT s.train_image_id) AS train_images,
       (SELECT max(r.started_at) FROM runs r WHERE r.run_id IN (SELECT run_id FROM fbmem_scores)) AS scored_at,
       (SELECT any_value(r.fbmem_version) FROM runs r WHERE r.run_id IN (SELECT run_id FROM fbmem_scores)) AS fbmem_version
  FROM fbmem_scores s
 GROUP BY s.scoring_id;

-- One row per labelled generation with what an evidence card shows, worst (highest pair score) first.
CREATE OR REPLACE VIEW report_generations AS
SELECT l.generated_image_id,
       l.train_image_id,
       l.fg_score,
       l.bg_score,
       l.pair_score,
       l.label,
       l.degenerate_rule,
       l.generation_id,
       l.prompt_id,
       p.text AS prompt,
       coalesce(l.prompt_set, p.prompt_set) AS prompt_set,
       l.model_id,
       l.mitigation,
       CAST(g.mitigation_params AS VARCHAR) AS mitigation_params,
       l.seed
  FROM fbmem_labels l
  LEFT JOIN generations g ON g.generation_id = l.generation_id
  LEFT JOIN prompts p ON p.prompt_id = l.prompt_id
 ORDER BY l.pair_score DESC NULLS LAST, l.generated_image_id, l.generation_id;

-- One-to-many evidence: per prompt, model and mitigation, every distinct training image its
-- generations best-match and how many generations chose it.
CREATE OR REPLACE VIEW report_prompt_matches AS
SELECT prompt_id, model_id, mitigation, train_image_id,
       count(*) AS generations,
       max(pair_score) AS best_pair_score
  FROM fbmem_labels
 WHERE prompt_id IS NOT NULL
 GROUP BY ALL
 ORDER BY prompt_id, model_id, mitigation, generations DESC, train_image_id;

-- The foreground masks the chosen scoring used (same segmenter and settings), one per image.
CREATE OR REPLACE VIEW report_masks AS
SELECT m.image_id, m.mask, m.fg_fraction
  FROM masks m
  JOIN (SELECT DISTINCT segmenter, mask_params_hash FROM fbmem_scores) s
    ON m.segmenter = s.segmenter AND (s.mask_params_hash IS NULL OR m.params_hash = s.mask_params_hash)
 WHERE m.status = 'ok' AND m.mask IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY m.image_id ORDER BY m.params_hash) = 1;

-- Where each readable image's bytes are stored (relative to the workspace).
CREATE OR REPLACE VIEW report_image_files AS
SELECT image_id, min(store_path) AS store_path
  FROM images
 WHERE status = 'ok' AND store_path IS NOT NULL
 GROUP BY image_id;
