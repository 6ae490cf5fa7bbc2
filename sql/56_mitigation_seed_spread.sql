-- Seed-to-seed spread of the mitigation comparison. Each seed's generations are a separate draw of the
-- same comparison; a difference between two methods that is smaller than their seed-to-seed spread is
-- not a finding. Per method (and parameter set, model) and per seed, over the same compared generations
-- as mitigation_comparison: the paper's mitigation score at that seed (sum of transition weights) and
-- the VM and NM shares; then over seeds: mean, sample standard deviation (NULL with one seed), min, max.
-- The 'none' row has score 0 by definition; its shares spread like any other method's.
-- Uses the `scoring_id` / `tau` variables of fbmem_labels.
CREATE OR REPLACE VIEW mitigation_seed_spread AS
WITH per_seed AS (
    SELECT method, mitigation_params, model_id, seed, count(*) AS n, sum(weight)::DOUBLE AS score,
           avg((label_after = 'VM')::INT) AS vm_rate, avg((label_after = 'NM')::INT) AS nm_rate
    FROM mitigation_transitions
    GROUP BY ALL
    UNION ALL
    SELECT 'none', NULL, model_id, seed, count(*), 0.0::DOUBLE,
           avg((label = 'VM')::INT), avg((label = 'NM')::INT)
    FROM mitigation_generation_labels
    WHERE mitigation = 'none' AND compared
      AND model_id IN (SELECT model_id FROM mitigation_transitions)
    GROUP BY ALL
)
SELECT method, mitigation_params, model_id, count(*) AS seeds, sum(n)::BIGINT AS n,
       avg(score) AS score_per_seed, stddev_samp(score) AS score_per_seed_sd,
       min(score) AS score_per_seed_min, max(score) AS score_per_seed_max,
       avg(vm_rate) AS vm_rate, stddev_samp(vm_rate) AS vm_rate_sd,
       avg(nm_rate) AS nm_rate, stddev_samp(nm_rate) AS nm_rate_sd,
       (SELECT scoring_id FROM fbmem_scoring_choice) AS scoring_id
FROM per_seed
GROUP BY method, mitigation_params, model_id
ORDER BY model_id, method = 'none' DESC, method, mitigation_params;
