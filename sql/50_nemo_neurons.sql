-- Neurons per prompt and their summary statistics (NeMo output, computed or imported).

-- One row per localized prompt and stage, zero included (prompts with no neurons have a
-- nemo_summary row and no nemo_neurons rows).
CREATE OR REPLACE VIEW nemo_prompt_neuron_counts AS
WITH stages AS (SELECT unnest(['initial', 'refined']) AS stage),
counts AS (
    SELECT localization_id, prompt_id, stage, count(*) AS n_neurons,
           count(DISTINCT layer) AS n_layers
    FROM nemo_neurons
    GROUP BY ALL
)
SELECT s.localization_id, s.prompt_id, s.model_id, st.stage, s.status,
       p.prompt_set, p.memorization_type,
       coalesce(c.n_neurons, 0) AS n_neurons, coalesce(c.n_layers, 0) AS n_layers
FROM nemo_summary s
CROSS JOIN stages st
LEFT JOIN counts c USING (localization_id, prompt_id, stage)
LEFT JOIN prompts p USING (prompt_id);

-- Neurons per prompt by memorization type (VM/TM) - the NeMo paper's figures.
CREATE OR REPLACE VIEW nemo_neuron_stats AS
SELECT localization_id, stage, memorization_type,
       count(*) AS n_prompts,
       median(n_neurons) AS median_neurons,
       avg(n_neurons) AS mean_neurons,
       max(n_neurons) AS max_neurons,
       count(*) FILTER (WHERE n_neurons = 1) AS n_exactly_one,
       count(*) FILTER (WHERE n_neurons = 0) AS n_none
FROM nemo_prompt_neuron_counts
WHERE status <> 'not_memorized' OR status IS NULL
GROUP BY ALL
ORDER BY localization_id, stage, memorization_type;

-- How often each neuron is chosen (refined stage), per localization.
CREATE OR REPLACE VIEW nemo_neuron_frequency AS
SELECT localization_id, model_id, layer, neuron, count(*) AS n_prompts
FROM nemo_neurons
WHERE stage = 'refined'
GROUP BY ALL
ORDER BY n_prompts DESC, layer, neuron;

-- Localization cost per prompt set and algorithm (UNet work spent per localized prompt).
CREATE OR REPLACE VIEW nemo_localization_cost AS
SELECT s.localization_id, s.algorithm, p.prompt_set, s.status, count(*) AS n_prompts,
       avg(s.hypotheses) AS mean_hypotheses, avg(s.unet_samples) AS mean_unet_samples,
       avg(s.unet_batches) AS mean_unet_batches, avg(s.wall_s) AS mean_wall_s,
       avg(s.n_refined) AS mean_refined_neurons
FROM nemo_summary s LEFT JOIN prompts p USING (prompt_id)
GROUP BY ALL
ORDER BY ALL;
