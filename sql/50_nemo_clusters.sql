-- NeMo-C: cluster masks from refined neurons, built in SQL.

-- Candidate mask rows: for each cluster of a clustering and each refined neuron of its localized
-- prompts, how many of the cluster's localized prompts hold it. n_prompts counts the cluster's
-- prompts that have a nemo_summary row under that localization (localized or imported).
CREATE OR REPLACE MACRO nemo_cluster_neuron_counts(clustering, localization) AS TABLE
WITH members AS (
    SELECT c.cluster, c.prompt_id, c.model_id
    FROM prompt_clusters c
    JOIN nemo_summary s ON s.prompt_id = c.prompt_id AND s.localization_id = localization
    WHERE c.clustering_id = clustering
),
sizes AS (SELECT cluster, count(*) AS n_prompts FROM members GROUP BY cluster)
SELECT m.cluster, n.layer, n.neuron, any_value(m.model_id) AS model_id,
       count(DISTINCT m.prompt_id) AS n_prompts_with, any_value(z.n_prompts) AS n_prompts
FROM members m
JOIN nemo_neurons n ON n.prompt_id = m.prompt_id AND n.localization_id = localization AND n.stage = 'refined'
JOIN sizes z USING (cluster)
GROUP BY m.cluster, n.layer, n.neuron;

-- The mask: union (q = NULL: every neuron any localized prompt of the cluster needs; the paper)
-- or the neurons present in at least a fraction q of the cluster's localized prompts.
CREATE OR REPLACE MACRO nemo_cluster_mask(clustering, localization, q) AS TABLE
SELECT cluster::INTEGER AS cluster, layer::SMALLINT AS layer, neuron::INTEGER AS neuron, model_id,
       n_prompts_with, n_prompts
FROM nemo_cluster_neuron_counts(clustering, localization)
WHERE q IS NULL OR n_prompts_with >= q * n_prompts
ORDER BY cluster, layer, neuron;

-- Cluster sizes and mask sizes per stored mask.
CREATE OR REPLACE VIEW nemo_cluster_mask_sizes AS
WITH sizes AS (
    SELECT clustering_id, cluster, count(*) AS cluster_prompts FROM prompt_clusters GROUP BY ALL
)
SELECT m.mask_id, m.clustering_id, m.localization_id, m.mask_rule, m.q, m.cluster,
       any_value(z.cluster_prompts) AS cluster_prompts, any_value(m.n_prompts) AS localized_prompts,
       count(*) AS mask_neurons
FROM cluster_masks m
LEFT JOIN sizes z USING (clustering_id, cluster)
GROUP BY ALL
ORDER BY m.mask_id, m.cluster;
