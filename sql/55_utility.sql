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

-- One row per method (and parameter set, model): the mean utility of its generations, and the
-- relative change against no mitigation on the same prompts, seeds and sampler settings
-- (utility_change compares only the generations that have such a `none` twin: n_paired of n).
CREATE OR REPLACE VIEW mitigation_utility AS
WITH per_generation AS (
    SELECT g.generation_id, g.prompt_id, g.model_id, g.seed, g.steps, g.guidance, g.height, g.width,
           g.mitigation, g.mitigation_params, u.value, u.metric
    FROM generations g
    JOIN utility_current u ON u.generated_image_id = g.image_id AND u.prompt_id = g.prompt_id
    WHERE u.status = 'ok'
),
paired AS (
    SELECT a.mitigation, a.mitigation_params, a.model_id, a.value, b.value AS value_none
    FROM per_generation a
    LEFT JOIN per_generation b
      ON b.mitigation = 'none' AND b.prompt_id = a.prompt_id AND b.model_id = a.model_id
     AND b.seed IS NOT DISTINCT FROM a.seed AND b.steps IS NOT DISTINCT FROM a.steps
     AND b.guidance IS NOT DISTINCT FROM a.guidance AND b.height IS NOT DISTINCT FROM a.height
     AND b.width IS NOT DISTINCT FROM a.width
)
SELECT mitigation AS method, mitigation_params, model_id,
       (SELECT any_value(metric) FROM utility_current) AS utility_metric,
       count(*) AS n, avg(value) AS utility,
       count(value_none) AS n_paired,
       avg(value_none) AS utility_none_same_generations,
       avg(value) FILTER (WHERE value_none IS NOT NULL) / nullif(avg(value_none), 0) - 1 AS utility_change
FROM paired
GROUP BY ALL
ORDER BY model_id, method, mitigation_params;

-- Lab: the same per planted group (lab_truth).
CREATE OR REPLACE VIEW mitigation_utility_by_group AS
SELECT g.mitigation AS method, g.mitigation_params, g.model_id, t.planted_group,
       count(*) AS n, avg(u.value) AS utility
FROM generations g
JOIN utility_current u ON u.generated_image_id = g.image_id AND u.prompt_id = g.prompt_id
JOIN lab_truth t ON t.prompt_id = g.prompt_id
WHERE u.status = 'ok'
GROUP BY ALL
ORDER BY g.model_id, method, g.mitigation_params, t.planted_group;
