-- One table comparing mitigations on the same prompts and seeds: FB-Mem rates, the paper's mitigation
-- score, utility (utility_current), neurons deactivated, and the score's seed-to-seed spread
-- (sql/55_mitigation_seed_spread.sql). Only compared generations count
-- (sql/15_generation_matching.sql): 'none' on the (prompt, seed, sampler settings) that some mitigation
-- also generated, each mitigation on those that 'none' generated. Uses the `scoring_id` / `tau`
-- variables of fbmem_labels and `utility_id` of utility_current.
CREATE OR REPLACE VIEW mitigation_comparison AS
WITH gens AS (
    SELECT l.*, g.image_id
    FROM mitigation_generation_labels l
    JOIN generations g USING (generation_id)
    WHERE l.compared
),
rates AS (
    SELECT gens.mitigation AS method, gens.mitigation_params, gens.model_id, count(*) AS n,
           avg((label = 'VM')::INT) AS vm_rate, avg((label = 'FM')::INT) AS fm_rate,
           avg((label = 'BM')::INT) AS bm_rate, avg((label = 'NM')::INT) AS nm_rate,
           avg(u.value) AS utility
    FROM gens
    LEFT JOIN utility_current u
      ON u.generated_image_id = gens.image_id AND u.prompt_id = gens.prompt_id AND u.status = 'ok'
    GROUP BY ALL
)
SELECT r.method, r.mitigation_params, r.model_id, r.n, r.vm_rate, r.fm_rate, r.bm_rate, r.nm_rate,
       CASE WHEN r.method = 'none' THEN 0.0 ELSE s.score END AS mitigation_score,
       r.utility,
       r.utility / nullif(b.utility, 0) - 1 AS utility_change,
       CASE WHEN r.method = 'none' THEN 0.0 ELSE d.mean_neurons END AS mean_neurons,
       sp.seeds, sp.score_per_seed, sp.score_per_seed_sd,
       (SELECT scoring_id FROM fbmem_scoring_choice) AS scoring_id,
       (SELECT any_value(utility_id) FROM utility_current) AS utility_id
FROM rates r
LEFT JOIN rates b ON b.method = 'none' AND b.model_id = r.model_id
LEFT JOIN mitigation_score s
  ON s.method = r.method AND s.mitigation_params IS NOT DISTINCT FROM r.mitigation_params AND s.model_id = r.model_id
LEFT JOIN mitigation_neurons_deactivated d
  ON d.method = r.method AND d.mitigation_params IS NOT DISTINCT FROM r.mitigation_params
LEFT JOIN mitigation_seed_spread sp
  ON sp.method = r.method AND sp.mitigation_params IS NOT DISTINCT FROM r.mitigation_params AND sp.model_id = r.model_id;
