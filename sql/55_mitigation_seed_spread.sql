-- Seed-to-seed spread of the mitigation comparison. Each seed's generations are a separate draw of the
-- same comparison; a difference between two methods that is smaller than their seed-to-seed spread is
-- not a finding. Uses the `scoring_id` / `tau` variables of fbmem_labels.

-- Per method (and parameter set, model) and seed, over the same compared generations as
-- mitigation_comparison: the paper's mitigation score at that seed (sum of transition weights) and the
-- VM and NM shares. The 'none' rows have score 0 by definition; their shares vary like any other's.
CREATE OR REPLACE VIEW mitigation_seed_scores AS
SELECT method, mitigation_params, model_id, seed, count(*) AS n, sum(weight)::DOUBLE AS score,
       avg((label_after = 'VM')::INT) AS vm_rate, avg((label_after = 'NM')::INT) AS nm_rate
FROM mitigation_transitions
GROUP BY ALL
UNION ALL
SELECT 'none', mitigation_params, model_id, seed, count(*), 0.0::DOUBLE,
       avg((label = 'VM')::INT), avg((label = 'NM')::INT)
FROM mitigation_generation_labels
WHERE mitigation = 'none' AND compared
  AND model_id IN (SELECT model_id FROM mitigation_transitions)
GROUP BY ALL;

-- Over seeds: mean, sample standard deviation (NULL with one seed), min and max of the per-seed score,
-- and the spread of the VM and NM shares. mitigation_comparison carries seeds, score_per_seed and
-- score_per_seed_sd from here.
CREATE OR REPLACE VIEW mitigation_seed_spread AS
SELECT method, mitigation_params, model_id, count(*) AS seeds, sum(n)::BIGINT AS n,
       avg(score) AS score_per_seed, stddev_samp(score) AS score_per_seed_sd,
       min(score) AS score_per_seed_min, max(score) AS score_per_seed_max,
       avg(vm_rate) AS vm_rate, stddev_samp(vm_rate) AS vm_rate_sd,
       avg(nm_rate) AS nm_rate, stddev_samp(nm_rate) AS nm_rate_sd,
       (SELECT scoring_id FROM fbmem_scoring_choice) AS scoring_id
FROM mitigation_seed_scores
GROUP BY method, mitigation_params, model_id
ORDER BY model_id, method = 'none' DESC, method, mitigation_params;

-- Paired by seed: for two mitigations of the same model, the difference of their per-seed scores
-- (method minus other), over the seeds both generated. Pairing removes what a seed does to both (the
-- same prompts and initial noise), so this spread is the one to hold a difference against: a mean
-- difference within about its sd, or seeds_better short of seeds, has not told the two apart.
CREATE OR REPLACE VIEW mitigation_seed_contrast AS
WITH per_seed AS (SELECT * FROM mitigation_seed_scores WHERE method <> 'none')
SELECT a.method, a.mitigation_params, b.method AS other_method, b.mitigation_params AS other_params,
       a.model_id, count(*) AS seeds,
       avg(a.score - b.score) AS score_difference, stddev_samp(a.score - b.score) AS score_difference_sd,
       min(a.score - b.score) AS score_difference_min, max(a.score - b.score) AS score_difference_max,
       count(*) FILTER (WHERE a.score > b.score) AS seeds_better,
       (SELECT scoring_id FROM fbmem_scoring_choice) AS scoring_id
FROM per_seed a
JOIN per_seed b
  ON b.model_id = a.model_id AND b.seed = a.seed
 AND (b.method <> a.method OR b.mitigation_params IS DISTINCT FROM a.mitigation_params)
GROUP BY a.method, a.mitigation_params, b.method, b.mitigation_params, a.model_id
ORDER BY a.model_id, a.method, a.mitigation_params, b.method, b.mitigation_params;
