-- Mitigation evaluation: label transitions (before -> after, same prompt and seed), the paper's
-- mitigation score (the paper's method) and FB-Mem rates per method.
--
-- Labels come from the FB-Mem views' `fbmem_labels` (sql/20_fbmem_3_labels.sql: generated_image_id,
-- label, ...; tau via the `tau` variable).

-- the paper's method: row = label before, column = label after.
CREATE OR REPLACE VIEW mitigation_score_weights AS
SELECT * FROM (VALUES
    ('VM', 'VM', 0.0), ('VM', 'BM', 1.5), ('VM', 'FM', 0.5), ('VM', 'NM', 2.0),
    ('BM', 'VM', -1.5), ('BM', 'BM', 0.0), ('BM', 'FM', -0.5), ('BM', 'NM', 0.5),
    ('FM', 'VM', -0.5), ('FM', 'BM', 1.0), ('FM', 'FM', 0.0), ('FM', 'NM', 1.5),
    ('NM', 'VM', -2.0), ('NM', 'BM', -0.5), ('NM', 'FM', -1.5), ('NM', 'NM', 0.0)
) AS w(label_before, label_after, weight);

-- One labelled row per generation (the generation's best match label). fbmem_labels already has one
-- row per generation; joining on the image instead would repeat a row whenever two methods draw the
-- same image (a NeMo prompt without neurons, a Wen prompt already under its target).
CREATE OR REPLACE VIEW mitigation_generation_labels AS
SELECT g.generation_id, g.prompt_id, g.model_id, g.seed, g.steps, g.guidance, g.height, g.width,
       g.mitigation, g.mitigation_params, l.label, m.match_key, m.compared
FROM generations g
JOIN fbmem_labels l ON l.generation_id = g.generation_id
JOIN generation_matching m ON m.generation_id = g.generation_id;

-- Before (mitigation 'none') -> after (each other mitigation and parameter set), same prompt, model,
-- seed and sampler settings (match_key: steps, guidance, size, scheduler, dtype).
CREATE OR REPLACE VIEW mitigation_transitions AS
SELECT a.mitigation AS method, a.mitigation_params, a.prompt_id, a.model_id, a.seed,
       b.label AS label_before, a.label AS label_after, w.weight,
       b.generation_id AS generation_before, a.generation_id AS generation_after
FROM mitigation_generation_labels a
JOIN mitigation_generation_labels b
  ON b.mitigation = 'none' AND a.mitigation <> 'none'
 AND b.model_id = a.model_id AND b.match_key = a.match_key
JOIN mitigation_score_weights w ON w.label_before = b.label AND w.label_after = a.label;

-- Transition matrix counts per method.
CREATE OR REPLACE VIEW mitigation_transition_counts AS
SELECT method, mitigation_params, label_before, label_after, count(*) AS n
FROM mitigation_transitions
GROUP BY ALL
ORDER BY method, mitigation_params, label_before, label_after;

-- The paper's mitigation score: the sum of the transition weights (higher = better mitigation).
CREATE OR REPLACE VIEW mitigation_score AS
SELECT method, mitigation_params, model_id, count(*) AS n_pairs, sum(weight) AS score,
       avg(weight) AS mean_weight,
       count(*) FILTER (WHERE label_before = 'VM') AS vm_before,
       count(*) FILTER (WHERE label_before = 'VM' AND label_after <> 'VM') AS vm_removed
FROM mitigation_transitions
GROUP BY ALL
ORDER BY score DESC;

-- FB-Mem label rates per mitigation over every labelled generation, 'none' included: NOT matched (a
-- `none` run over more prompts than a mitigation sits beside it; n says so). mitigation_comparison
-- gives the matched rates.
CREATE OR REPLACE VIEW fbmem_rates_by_method AS
SELECT mitigation AS method, mitigation_params, model_id, count(*) AS n,
       avg((label = 'VM')::INT) AS vm_rate, avg((label = 'BM')::INT) AS bm_rate,
       avg((label = 'FM')::INT) AS fm_rate, avg((label = 'NM')::INT) AS nm_rate
FROM mitigation_generation_labels
GROUP BY ALL
ORDER BY model_id, method, mitigation_params;

-- NeMo neurons deactivated per generation's method, for the comparison table: mean refined neurons
-- per prompt (nemo) and mean cluster-mask size (nemo-c), from the parameters recorded with generations.
CREATE OR REPLACE VIEW mitigation_neurons_deactivated AS
WITH gens AS (
    SELECT DISTINCT mitigation, mitigation_params, prompt_id,
           json_extract_string(mitigation_params, '$.localization') AS localization_id,
           json_extract_string(mitigation_params, '$.mask') AS mask_id
    FROM generations WHERE mitigation IN ('nemo', 'nemo-c')
),
per_prompt AS (
    SELECT g.mitigation, g.mitigation_params, g.prompt_id,
           CASE WHEN g.mitigation = 'nemo'
                THEN (SELECT count(*) FROM nemo_neurons n WHERE n.localization_id = g.localization_id
                       AND n.prompt_id = g.prompt_id AND n.stage = 'refined')
                ELSE (SELECT count(*) FROM cluster_masks m JOIN prompt_clusters c
                        ON c.clustering_id = m.clustering_id AND c.cluster = m.cluster
                       WHERE m.mask_id = g.mask_id AND c.prompt_id = g.prompt_id)
           END AS neurons
    FROM gens g
)
SELECT mitigation AS method, mitigation_params, count(*) AS n_prompts, avg(neurons) AS mean_neurons,
       median(neurons) AS median_neurons, max(neurons) AS max_neurons
FROM per_prompt
GROUP BY ALL;
