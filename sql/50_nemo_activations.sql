-- NeMo activations and statistics (fbmem_data.nemo). See docs/nemo.md.

-- Per-neuron mean and sample std of stored activations over one prompt set:
--   SELECT * FROM nemo_activation_stats('model-id', 'unmemorized')
CREATE OR REPLACE MACRO nemo_activation_stats(model, pset) AS TABLE
WITH per_neuron AS (
    SELECT a.layer,
           generate_subscripts(a.activation, 1) - 1 AS neuron,
           unnest(a.activation) AS value
    FROM activations a
    JOIN prompts p USING (prompt_id)
    WHERE a.model_id = model AND p.prompt_set = pset
)
SELECT layer::SMALLINT AS layer, neuron::INTEGER AS neuron, avg(value) AS mean,
       stddev_samp(value) AS std, count(*) AS n_prompts
FROM per_neuron
GROUP BY layer, neuron
ORDER BY layer, neuron;

-- Widths of the stored statistics per model and reference (SD v1.4: 320,320,640,640,1280,1280,1280).
CREATE OR REPLACE VIEW nemo_stats_layers AS
SELECT model_id, reference, layer, count(*) AS width, avg(mean) AS avg_mean, avg(std) AS avg_std
FROM neuron_stats
GROUP BY ALL
ORDER BY model_id, reference, layer;

-- Activations standardised against a reference: z = |a - mean| / std per neuron (the initial
-- selection's criterion). Set the variable `stats_reference` to choose the reference.
CREATE OR REPLACE VIEW nemo_activation_z AS
WITH per_neuron AS (
    SELECT model_id, prompt_id, layer,
           generate_subscripts(activation, 1) - 1 AS neuron,
           unnest(activation) AS value
    FROM activations
)
SELECT a.model_id, a.prompt_id, a.layer, a.neuron, a.value, s.reference,
       abs(a.value - s.mean) / nullif(s.std, 0) AS z
FROM per_neuron a
JOIN neuron_stats s
  ON s.model_id = a.model_id AND s.layer = a.layer AND s.neuron = a.neuron
WHERE getvariable('stats_reference') IS NULL OR s.reference = getvariable('stats_reference');

-- The current detection threshold per model and method: the newest calibration.
CREATE OR REPLACE VIEW nemo_current_calibration AS
SELECT * FROM nemo_calibration
QUALIFY row_number() OVER (PARTITION BY model_id, method ORDER BY created_at DESC, calibration_id) = 1;
