-- fbmem_evidence: one row per labelled generated image with what a reviewer needs outside fbmem
-- (FiftyOne, HF datasets, a notebook, a spreadsheet): the prompt's text and set, the generation's model,
-- mitigation and seed, the generated image and its best-matching training image as ABSOLUTE file paths,
-- the region scores, the label at tau and the scoring configuration they come from (the variables tau and
-- scoring_id choose, as for fbmem_labels). Every export of `fbmem export` reads this view.
CREATE OR REPLACE VIEW fbmem_evidence AS
SELECT l.generated_image_id,
       l.generation_id,
       l.prompt_id,
       p.text AS prompt_text,
       l.prompt_set,
       p.memorization_type,
       l.model_id,
       l.mitigation,
       g.mitigation_params,
       l.seed,
       g.steps,
       g.guidance,
       fbmem_workspace_root() || '/' || gf.store_path AS generated_path,
       l.train_image_id AS matched_image_id,
       fbmem_workspace_root() || '/' || tf.store_path AS matched_path,
       ti.source_uri AS matched_source_uri,
       l.fg_score,
       l.bg_score,
       l.pair_score,
       l.label,
       l.tau,
       l.degenerate_rule,
       l.scoring_id
  FROM fbmem_labels l
  LEFT JOIN generations g ON g.generation_id = l.generation_id
  LEFT JOIN prompts p ON p.prompt_id = l.prompt_id
  LEFT JOIN report_image_files gf ON gf.image_id = l.generated_image_id
  LEFT JOIN report_image_files tf ON tf.image_id = l.train_image_id
  LEFT JOIN (SELECT image_id, min(source_uri) AS source_uri FROM images GROUP BY image_id) ti
    ON ti.image_id = l.train_image_id
 ORDER BY l.prompt_set NULLS LAST, l.prompt_id, l.model_id, l.mitigation, l.seed, l.generated_image_id;
