-- "Average change in foreground similarity" under a mitigation: each mitigated generation against the
-- `none` generation of the same prompt, model, seed and sampler settings (steps, guidance, size).
-- Scores come from fbmem_labels (one scoring configuration: variable scoring_id, else the latest).
--
-- fg_change / bg_change compare each generation's own best match (what its label is read from);
-- fg_change_same_train compares both generations against the training image the unmitigated one
-- best-matched, when that pair was scored (null otherwise: pair with --k large enough, or exhaustively).
CREATE OR REPLACE VIEW mitigation_similarity_pairs AS
SELECT a.mitigation AS method, a.mitigation_params, a.prompt_id, a.model_id, a.seed,
       a.steps, a.guidance, a.height, a.width,
       b.generation_id AS generation_before, a.generation_id AS generation_after,
       lb.train_image_id AS train_before, la.train_image_id AS train_after,
       lb.label AS label_before, la.label AS label_after,
       lb.fg_score AS fg_before, la.fg_score AS fg_after, la.fg_score - lb.fg_score AS fg_change,
       lb.bg_score AS bg_before, la.bg_score AS bg_after, la.bg_score - lb.bg_score AS bg_change,
       s.fg_score AS fg_after_same_train, s.fg_score - lb.fg_score AS fg_change_same_train,
       s.bg_score AS bg_after_same_train, s.bg_score - lb.bg_score AS bg_change_same_train
FROM generations a
JOIN generations b
  ON b.mitigation = 'none' AND a.mitigation <> 'none'
 AND b.prompt_id = a.prompt_id AND b.model_id = a.model_id AND b.seed IS NOT DISTINCT FROM a.seed
 AND b.steps IS NOT DISTINCT FROM a.steps AND b.guidance IS NOT DISTINCT FROM a.guidance
 AND b.height IS NOT DISTINCT FROM a.height AND b.width IS NOT DISTINCT FROM a.width
JOIN fbmem_labels la ON la.generation_id = a.generation_id
JOIN fbmem_labels lb ON lb.generation_id = b.generation_id
LEFT JOIN fbmem_scores s ON s.generated_image_id = a.image_id AND s.train_image_id = lb.train_image_id;

-- Per method (and parameter set, model): the mean change over the matched pairs, with its spread and
-- how often the foreground similarity went down. Negative = the mitigation moved generations away.
CREATE OR REPLACE VIEW mitigation_similarity_change AS
SELECT method, mitigation_params, model_id,
       count(*) AS n_pairs,
       avg(fg_before) AS fg_before, avg(fg_after) AS fg_after,
       avg(fg_change) AS fg_change, stddev_samp(fg_change) AS fg_change_std,
       avg((fg_change < 0)::INT) AS fg_down_share,
       avg(bg_before) AS bg_before, avg(bg_after) AS bg_after,
       avg(bg_change) AS bg_change, stddev_samp(bg_change) AS bg_change_std,
       count(fg_change_same_train) AS n_same_train,
       avg(fg_change_same_train) AS fg_change_same_train,
       avg(bg_change_same_train) AS bg_change_same_train
FROM mitigation_similarity_pairs
GROUP BY ALL
ORDER BY model_id, method, mitigation_params;

-- The same split by the unmitigated generation's label (e.g. how far FM generations' foregrounds move).
CREATE OR REPLACE VIEW mitigation_similarity_change_by_label AS
SELECT method, mitigation_params, model_id, label_before,
       count(*) AS n_pairs, avg(fg_change) AS fg_change, avg(bg_change) AS bg_change,
       avg(fg_change_same_train) AS fg_change_same_train
FROM mitigation_similarity_pairs
GROUP BY ALL
ORDER BY model_id, method, mitigation_params, label_before;
