-- The lab's views: everything that joins the planted truth (`lab_truth`, docs/lab.md). Kept apart from the
-- core views so that the core SQL knows nothing of the lab; loaded last, after the views they build on
-- (fbmem_labels, mitigation_generation_labels, mitigation_transitions, nemo_summary, utility_current).

-- lab_confusion: FB-Mem labels of the lab's generations against the planted truth (docs/lab.md).
-- One row per scoring configuration, model, mitigation and planted group: label counts and shares,
-- and `hit_share`, the share the planted targets are stated on (VM -> VM; FM -> FM or VM;
-- BM -> BM or VM; unique and control -> NM; template -> anything memorized: VM, BM or FM).
CREATE OR REPLACE VIEW lab_confusion AS
SELECT l.scoring_id,
       l.model_id,
       l.mitigation,
       t.planted_group,
       count(*) AS n,
       count(DISTINCT l.prompt_id) AS prompts,
       count(*) FILTER (WHERE l.label = 'VM') AS vm,
       count(*) FILTER (WHERE l.label = 'FM') AS fm,
       count(*) FILTER (WHERE l.label = 'BM') AS bm,
       count(*) FILTER (WHERE l.label = 'NM') AS nm,
       round(count(*) FILTER (WHERE CASE t.planted_group
                                      WHEN 'VM' THEN l.label = 'VM'
                                      WHEN 'FM' THEN l.label IN ('FM', 'VM')
                                      WHEN 'BM' THEN l.label IN ('BM', 'VM')
                                      WHEN 'template' THEN l.label <> 'NM'
                                      ELSE l.label = 'NM' END) / count(*), 4) AS hit_share,
       CASE t.planted_group WHEN 'VM' THEN 0.8 WHEN 'FM' THEN 0.7 WHEN 'BM' THEN 0.7
                            WHEN 'template' THEN NULL ELSE 0.9 END AS target
  FROM fbmem_labels l
  JOIN lab_truth t USING (prompt_id)
 GROUP BY l.scoring_id, l.model_id, l.mitigation, t.planted_group
 ORDER BY scoring_id, model_id, mitigation,
          list_position(['VM', 'FM', 'BM', 'template', 'unique', 'control'], planted_group);

-- lab_truth_match: for each labelled lab generation, whether its best match is one of the planted
-- group's own training images (a VM label on a VM prompt should copy that prompt's image).
CREATE OR REPLACE VIEW lab_truth_match AS
SELECT l.generated_image_id,
       l.prompt_id,
       l.scoring_id,
       l.model_id,
       l.mitigation,
       t.planted_group,
       l.label,
       l.train_image_id,
       list_contains(t.train_image_ids, l.train_image_id) AS matches_own_group,
       l.fg_score,
       l.bg_score
  FROM fbmem_labels l
  JOIN lab_truth t USING (prompt_id);

-- Lab: FB-Mem label rates per mitigation and planted group (lab_truth), with the mitigation score.
CREATE OR REPLACE VIEW fbmem_rates_by_group AS
WITH rates AS (
    SELECT g.mitigation AS method, g.mitigation_params, g.model_id, t.planted_group, count(*) AS n,
           avg((g.label = 'VM')::INT) AS vm_rate, avg((g.label = 'BM')::INT) AS bm_rate,
           avg((g.label = 'FM')::INT) AS fm_rate, avg((g.label = 'NM')::INT) AS nm_rate
    FROM mitigation_generation_labels g
    JOIN lab_truth t USING (prompt_id)
    GROUP BY ALL
),
scores AS (
    SELECT m.method, m.mitigation_params, m.model_id, t.planted_group, sum(m.weight) AS score, count(*) AS n_pairs
    FROM mitigation_transitions m
    JOIN lab_truth t USING (prompt_id)
    GROUP BY ALL
)
SELECT r.*, s.score AS mitigation_score, s.n_pairs
FROM rates r
LEFT JOIN scores s
  ON s.method = r.method AND s.mitigation_params IS NOT DISTINCT FROM r.mitigation_params
 AND s.model_id = r.model_id AND s.planted_group = r.planted_group
ORDER BY r.model_id, r.method, r.planted_group;

-- Lab: NeMo outcome per planted group (memorized groups should get neurons, controls few or none).
CREATE OR REPLACE VIEW nemo_neurons_by_group AS
SELECT s.localization_id, t.planted_group, count(*) AS n_prompts,
       count(*) FILTER (WHERE s.status = 'not_memorized') AS n_not_memorized,
       avg(coalesce(s.n_refined, 0)) AS mean_refined_neurons, median(coalesce(s.n_refined, 0)) AS median_refined_neurons,
       avg(s.detection_score) AS mean_detection_score
FROM nemo_summary s
JOIN lab_truth t USING (prompt_id)
GROUP BY ALL
ORDER BY s.localization_id, t.planted_group;

-- Lab: mean utility per mitigation and planted group (sql/55_utility.sql averages it per method).
CREATE OR REPLACE VIEW mitigation_utility_by_group AS
SELECT g.mitigation AS method, g.mitigation_params, g.model_id, t.planted_group,
       count(*) AS n, avg(u.value) AS utility
FROM generations g
JOIN utility_current u ON u.generated_image_id = g.image_id AND u.prompt_id = g.prompt_id
JOIN lab_truth t ON t.prompt_id = g.prompt_id
WHERE u.status = 'ok'
GROUP BY ALL
ORDER BY g.model_id, method, g.mitigation_params, t.planted_group;
