-- NeMo's own memorization and diversity figures (its metrics/compute_sscd_orig.py, compute_sscd_gen.py,
-- compute_diversity.py), from stored image embeddings: run `fbmem embed --embedder sscd --weights FILE`
-- (NeMo's SSCD disc_mixup at 320x320; a user brings the weights) over the generated and training images.
-- The embedder is the `nemo_embedder` variable (default 'sscd'; 'open_clip' gives NeMo's CLIP variant),
-- one configuration of it (embedding_current). Prompt alignment (CLIP score) is the `clip` utility
-- metric: mitigation_utility (sql/55_utility.sql).

-- Every generation's unit embedding under the chosen embedder.
CREATE OR REPLACE VIEW nemo_generation_vectors AS
SELECT g.generation_id, g.prompt_id, g.model_id, g.seed, g.steps, g.guidance, g.height, g.width,
       g.mitigation, g.mitigation_params, e.vector
  FROM generations g
  JOIN embedding_current e
    ON e.image_id = g.image_id
   AND e.embedder = coalesce(TRY_CAST(getvariable('nemo_embedder') AS VARCHAR), 'sscd');

-- Memorization towards the training images (compute_sscd_orig): per generated image the median cosine
-- over its prompt's training images (train_links), then per prompt the max and the median of that over
-- the prompt's generations.
CREATE OR REPLACE VIEW nemo_sim_orig_per_prompt AS
WITH per_image AS (
    SELECT v.generation_id, v.prompt_id, v.model_id, v.mitigation, v.mitigation_params,
           median(list_dot_product(v.vector, t.vector)) AS sim
      FROM nemo_generation_vectors v
      JOIN train_links l ON l.prompt_id = v.prompt_id
      JOIN embedding_current t
        ON t.image_id = l.image_id AND t.embedder = coalesce(TRY_CAST(getvariable('nemo_embedder') AS VARCHAR), 'sscd')
     GROUP BY ALL
)
SELECT mitigation AS method, mitigation_params, model_id, prompt_id,
       count(*) AS generations, max(sim) AS sim_max, median(sim) AS sim_median
  FROM per_image
 GROUP BY ALL;

-- Memorization against the unmitigated images (compute_sscd_gen): each mitigated generation against the
-- `none` generation of the same prompt, seed and sampler settings; median cosine per prompt.
CREATE OR REPLACE VIEW nemo_sim_gen_per_prompt AS
SELECT a.mitigation AS method, a.mitigation_params, a.model_id, a.prompt_id,
       count(*) AS pairs, median(list_dot_product(a.vector, b.vector)) AS sim_median
  FROM nemo_generation_vectors a
  JOIN nemo_generation_vectors b
    ON b.mitigation = 'none' AND a.mitigation <> 'none'
   AND b.prompt_id = a.prompt_id AND b.model_id = a.model_id AND b.seed IS NOT DISTINCT FROM a.seed
   AND b.steps IS NOT DISTINCT FROM a.steps AND b.guidance IS NOT DISTINCT FROM a.guidance
   AND b.height IS NOT DISTINCT FROM a.height AND b.width IS NOT DISTINCT FROM a.width
 GROUP BY ALL;

-- Diversity (compute_diversity): median pairwise cosine among a prompt's generations under one method
-- and sampler settings (lower = more diverse).
CREATE OR REPLACE VIEW nemo_diversity_per_prompt AS
SELECT a.mitigation AS method, a.mitigation_params, a.model_id, a.prompt_id,
       count(*) AS pairs, median(list_dot_product(a.vector, b.vector)) AS sim_median
  FROM nemo_generation_vectors a
  JOIN nemo_generation_vectors b
    ON b.generation_id > a.generation_id
   AND b.prompt_id = a.prompt_id AND b.model_id = a.model_id AND b.mitigation = a.mitigation
   AND b.mitigation_params IS NOT DISTINCT FROM a.mitigation_params
   AND b.steps IS NOT DISTINCT FROM a.steps AND b.guidance IS NOT DISTINCT FROM a.guidance
   AND b.height IS NOT DISTINCT FROM a.height AND b.width IS NOT DISTINCT FROM a.width
 GROUP BY ALL;

-- NeMo's summary: per figure, method and memorization type (VM, TM, and 'all'), the median over prompts
-- and the median absolute deviation around it (NeMo prints "median +- MAD").
CREATE OR REPLACE VIEW nemo_evaluation AS
WITH per_prompt AS (
    SELECT 'sim_orig_max' AS figure, method, mitigation_params, model_id, prompt_id, sim_max AS value FROM nemo_sim_orig_per_prompt
    UNION ALL
    SELECT 'sim_orig_median', method, mitigation_params, model_id, prompt_id, sim_median FROM nemo_sim_orig_per_prompt
    UNION ALL
    SELECT 'sim_gen', method, mitigation_params, model_id, prompt_id, sim_median FROM nemo_sim_gen_per_prompt
    UNION ALL
    SELECT 'diversity', method, mitigation_params, model_id, prompt_id, sim_median FROM nemo_diversity_per_prompt
),
typed AS (
    SELECT x.*, coalesce(p.memorization_type, 'unknown') AS memorization_type
      FROM per_prompt x LEFT JOIN prompts p USING (prompt_id)
     UNION ALL
    SELECT x.*, 'all' FROM per_prompt x
),
medians AS (
    SELECT figure, method, mitigation_params, model_id, memorization_type, median(value) AS median, count(*) AS n_prompts
      FROM typed GROUP BY ALL
)
SELECT m.figure, m.method, m.mitigation_params, m.model_id, m.memorization_type, m.n_prompts, m.median,
       median(abs(t.value - m.median)) AS mad,
       coalesce(TRY_CAST(getvariable('nemo_embedder') AS VARCHAR), 'sscd') AS embedder
  FROM medians m
  JOIN typed t USING (figure, method, model_id, memorization_type)
 WHERE t.mitigation_params IS NOT DISTINCT FROM m.mitigation_params
 GROUP BY ALL
 ORDER BY m.figure, m.model_id, m.method, m.mitigation_params, m.memorization_type;
