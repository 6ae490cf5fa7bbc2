-- Utility of generations per mitigation (fbmem_data/utility): how well images still show their prompt.
--
-- utility_scores holds one value per (utility configuration, generated image, prompt). The views
-- below use one configuration: the `utility_id` variable, else the one with the most ok values
-- (among the plug-in named by the `utility_plugin` variable, e.g. 'clip', when that is set).

CREATE OR REPLACE VIEW utility_current AS
SELECT s.*
FROM utility_scores s
WHERE s.utility_id = coalesce(
    TRY_CAST(getvariable('utility_id') AS VARCHAR),
    (SELECT utility_id FROM utility_scores
     WHERE status = 'ok'
       AND plugin = coalesce(TRY_CAST(getvariable('utility_plugin') AS VARCHAR), plugin)
     GROUP BY utility_id
     ORDER BY count(*) DESC, utility_id LIMIT 1));

-- One row per method (and parameter set, model): the mean utility of its compared generations
-- (sql/15_generation_matching.sql: 'none' on the prompts, seeds and sampler settings that a mitigation
-- also generated, each mitigation on those 'none' generated), so `none` is the baseline of the same
-- generations, as in mitigation_comparison. utility_change: the method's values that have a 'none' twin
-- value (same model, prompt, seed and sampler settings; n_paired of n) against those twins.
-- n_generated and utility_all: every generation with a value, compared or not.
CREATE OR REPLACE VIEW mitigation_utility AS
WITH per_generation AS (
    SELECT m.generation_id, m.model_id, m.mitigation, m.mitigation_params, m.match_key, m.compared,
           u.value, u.metric
    FROM generation_matching m
    JOIN utility_current u ON u.generated_image_id = m.image_id AND u.prompt_id = m.prompt_id
    WHERE u.status = 'ok'
),
paired AS (
    SELECT a.*, b.value AS value_none
    FROM per_generation a
    LEFT JOIN per_generation b
      ON b.mitigation = 'none' AND b.model_id = a.model_id AND b.match_key = a.match_key
)
SELECT mitigation AS method, mitigation_params, model_id,
       (SELECT any_value(metric) FROM utility_current) AS utility_metric,
       count(*) FILTER (WHERE compared) AS n,
       avg(value) FILTER (WHERE compared) AS utility,
       count(value_none) AS n_paired,
       avg(value) FILTER (WHERE value_none IS NOT NULL) / nullif(avg(value_none), 0) - 1 AS utility_change,
       count(*) AS n_generated,
       avg(value) AS utility_all,
       (SELECT any_value(utility_id) FROM utility_current) AS utility_id
FROM paired
GROUP BY ALL
ORDER BY model_id, method, mitigation_params;
