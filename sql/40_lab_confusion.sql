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
