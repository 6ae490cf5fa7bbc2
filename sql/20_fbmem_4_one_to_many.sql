-- one_to_many: per prompt (and model, mitigation), how many generations, how many distinct training
-- images they best-match (n_distinct_best, 1..20 in the reference setting) and their labels
-- (the paper's method; the reference uses the unmodified model: filter mitigation = 'none').
CREATE OR REPLACE VIEW one_to_many AS
SELECT prompt_id,
       any_value(prompt_set) AS prompt_set,
       model_id,
       mitigation,
       count(*) AS generations,
       count(DISTINCT train_image_id) AS n_distinct_best,
       count(*) FILTER (WHERE label = 'VM') AS vm,
       count(*) FILTER (WHERE label = 'BM') AS bm,
       count(*) FILTER (WHERE label = 'FM') AS fm,
       count(*) FILTER (WHERE label = 'NM') AS nm
  FROM fbmem_labels
 WHERE prompt_id IS NOT NULL
 GROUP BY prompt_id, model_id, mitigation;

-- one_to_many_histogram: over n_distinct_best, how many prompts and generations, and their labels.
CREATE OR REPLACE VIEW one_to_many_histogram AS
SELECT model_id,
       mitigation,
       n_distinct_best,
       count(*) AS prompts,
       sum(generations) AS generations,
       sum(vm) AS vm,
       sum(bm) AS bm,
       sum(fm) AS fm,
       sum(nm) AS nm,
       round(sum(vm) / sum(generations), 4) AS vm_share,
       round(sum(bm) / sum(generations), 4) AS bm_share,
       round(sum(fm) / sum(generations), 4) AS fm_share,
       round(sum(nm) / sum(generations), 4) AS nm_share
  FROM one_to_many
 GROUP BY model_id, mitigation, n_distinct_best
 ORDER BY model_id, mitigation, n_distinct_best;
