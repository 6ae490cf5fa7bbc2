-- NeMo-C mask transfer (the paper's cluster-transfer experiment): cluster C's mask applied to the prompts
-- of every cluster (mitigation `nemo-c-transfer`, parameters mask and cluster), compared with the
-- unmitigated generation of the same prompt, seed and sampler settings, against the distance between
-- the cluster centroids (cluster_centroids, written by `fbmem nemo-c transfer --model ...`).

-- Euclidean distance between every two centroids of a clustering (one model and embedding).
CREATE OR REPLACE VIEW nemo_cluster_centroid_distances AS
SELECT a.clustering_id, a.model_id, a.embedding, a.cluster AS cluster_a, b.cluster AS cluster_b,
       list_distance(a.centroid, b.centroid) AS distance
  FROM cluster_centroids a
  JOIN cluster_centroids b USING (clustering_id, model_id, embedding);

-- One row per matched pair (transfer generation, unmitigated twin). The FB-Mem scores come from
-- mitigation_similarity_pairs; emb_before / emb_after are the cosines of the two images to the training
-- image the unmitigated one best-matched under the `transfer_embedder` embedder (default open_clip:
-- the paper compared CLIP ViT-B/32 image embeddings), null without embeddings.
CREATE OR REPLACE VIEW nemo_c_transfer_pairs AS
WITH masks AS (SELECT DISTINCT mask_id, clustering_id FROM cluster_masks),
emb AS (
    SELECT image_id, vector FROM embedding_current
     WHERE embedder = coalesce(TRY_CAST(getvariable('transfer_embedder') AS VARCHAR), 'open_clip')
)
SELECT json_extract_string(p.mitigation_params, '$.mask') AS mask_id, m.clustering_id, c.embedding,
       TRY_CAST(json_extract_string(p.mitigation_params, '$.cluster') AS INTEGER) AS source_cluster,
       c.cluster AS target_cluster, p.*, w.weight,
       list_dot_product(eb.vector, et.vector) AS emb_before,
       list_dot_product(ea.vector, et.vector) AS emb_after
  FROM mitigation_similarity_pairs p
  JOIN masks m ON m.mask_id = json_extract_string(p.mitigation_params, '$.mask')
  JOIN prompt_clusters c ON c.clustering_id = m.clustering_id AND c.prompt_id = p.prompt_id
  LEFT JOIN mitigation_score_weights w ON w.label_before = p.label_before AND w.label_after = p.label_after
  LEFT JOIN generations gb ON gb.generation_id = p.generation_before
  LEFT JOIN generations ga ON ga.generation_id = p.generation_after
  LEFT JOIN emb eb ON eb.image_id = gb.image_id
  LEFT JOIN emb ea ON ea.image_id = ga.image_id
  LEFT JOIN emb et ON et.image_id = p.train_before
 WHERE p.method = 'nemo-c-transfer';

-- Per mask, source cluster (whose mask) and target cluster (whose prompts): how much the mask changed
-- the target's generations, and the centroid distance between the two clusters.
CREATE OR REPLACE VIEW nemo_c_transfer AS
SELECT t.mask_id, t.clustering_id, t.model_id, t.source_cluster, t.target_cluster,
       t.source_cluster = t.target_cluster AS in_cluster,
       any_value(d.distance) AS centroid_distance,
       count(*) AS n_pairs,
       avg(t.fg_change) AS fg_change, avg(abs(t.fg_change)) AS fg_abs_change,
       avg(t.bg_change) AS bg_change, avg(abs(t.bg_change)) AS bg_abs_change,
       sum(t.weight)::DOUBLE AS mitigation_score, avg(t.weight)::DOUBLE AS mean_weight,
       avg((t.label_before <> 'NM')::INT) AS memorized_before, avg((t.label_after <> 'NM')::INT) AS memorized_after,
       avg(t.emb_after - t.emb_before) AS emb_change, avg(abs(t.emb_after - t.emb_before)) AS emb_abs_change
  FROM nemo_c_transfer_pairs t
  LEFT JOIN nemo_cluster_centroid_distances d
    ON d.clustering_id = t.clustering_id AND d.embedding = t.embedding
   AND d.cluster_a = t.source_cluster AND d.cluster_b = t.target_cluster
 GROUP BY ALL
 ORDER BY t.mask_id, t.source_cluster, t.target_cluster;

-- The paper's line through the out-of-cluster targets (its load_n_graph_diff.py: mean |change| against
-- centroid distance, np.polyfit degree 1): slope, intercept and r^2 of each measure.
CREATE OR REPLACE VIEW nemo_c_transfer_fit AS
SELECT mask_id, clustering_id, model_id, source_cluster,
       count(*) AS n_targets,
       regr_slope(fg_abs_change, centroid_distance) AS fg_abs_slope,
       regr_intercept(fg_abs_change, centroid_distance) AS fg_abs_intercept,
       regr_r2(fg_abs_change, centroid_distance) AS fg_abs_r2,
       regr_slope(bg_abs_change, centroid_distance) AS bg_abs_slope,
       regr_slope(mean_weight, centroid_distance) AS mean_weight_slope,
       regr_slope(emb_abs_change, centroid_distance) AS emb_abs_slope,
       regr_intercept(emb_abs_change, centroid_distance) AS emb_abs_intercept,
       regr_r2(emb_abs_change, centroid_distance) AS emb_abs_r2
  FROM nemo_c_transfer
 WHERE NOT in_cluster AND centroid_distance IS NOT NULL
 GROUP BY ALL
 ORDER BY mask_id, source_cluster;
