-- fbmem_labels: the FB-Mem label of every generated image from its best match (the paper's method).
-- tau from the variable tau (default 0.8). Rule order: VM (bg and fg >= tau), BM (bg >= tau),
-- FM (fg >= tau), NM. Generation settings joined when the image has a generations row (one row per
-- generation that produced these bytes); prompt_set from prompts.
CREATE OR REPLACE VIEW fbmem_labels AS
-- A tau outside [0, 1] is an error here too (the DuckDB shell's SET VARIABLE is not checked by fbmem).
WITH t AS (
    SELECT CASE WHEN tau BETWEEN 0 AND 1 THEN tau ELSE error('tau must lie in [0, 1], got ' || tau) END AS tau
      FROM (SELECT coalesce(CAST(getvariable('tau') AS DOUBLE), 0.8) AS tau)
)
SELECT b.generated_image_id,
       b.train_image_id,
       b.fg_score,
       b.bg_score,
       b.pair_score,
       CASE WHEN b.bg_score >= t.tau AND b.fg_score >= t.tau THEN 'VM'
            WHEN b.bg_score >= t.tau THEN 'BM'
            WHEN b.fg_score >= t.tau THEN 'FM'
            ELSE 'NM' END AS label,
       t.tau,
       b.degenerate_rule,
       g.generation_id,
       g.prompt_id,
       p.prompt_set,
       g.model_id,
       g.mitigation,
       g.seed,
       b.scoring_id
  FROM best_match b
  CROSS JOIN t
  LEFT JOIN generations g ON g.image_id = b.generated_image_id
  LEFT JOIN prompts p ON p.prompt_id = g.prompt_id;

-- fbmem_rates: label counts and shares by prompt set, model, mitigation and its parameters, on matched
-- generations (sql/15_generation_matching.sql): within a prompt set, only the (prompt, seed, sampler
-- settings) that every model and mitigation of that set generated count in n and the shares, so the rows
-- of one prompt set compare like with like. n_generated counts every labelled generation of the row
-- (fbmem_rates_all: the shares over all of them). Images without a generations row count as matched.
CREATE OR REPLACE VIEW fbmem_rates_all AS
SELECT l.prompt_set,
       l.model_id,
       l.mitigation,
       m.mitigation_params,
       count(*) AS n,
       count(*) FILTER (WHERE label = 'VM') AS vm,
       count(*) FILTER (WHERE label = 'BM') AS bm,
       count(*) FILTER (WHERE label = 'FM') AS fm,
       count(*) FILTER (WHERE label = 'NM') AS nm,
       round(count(*) FILTER (WHERE label = 'VM') / count(*), 4) AS vm_share,
       round(count(*) FILTER (WHERE label = 'BM') / count(*), 4) AS bm_share,
       round(count(*) FILTER (WHERE label = 'FM') / count(*), 4) AS fm_share,
       round(count(*) FILTER (WHERE label = 'NM') / count(*), 4) AS nm_share,
       any_value(tau) AS tau,
       any_value(l.scoring_id) AS scoring_id
  FROM fbmem_labels l
  LEFT JOIN generation_matching m USING (generation_id)
 GROUP BY ALL
 ORDER BY prompt_set NULLS LAST, model_id NULLS LAST, mitigation NULLS LAST, mitigation_params NULLS FIRST;

CREATE OR REPLACE VIEW fbmem_rates AS
WITH l AS (
    SELECT l.*, m.mitigation_params, coalesce(m.matched, true) AS matched
      FROM fbmem_labels l
      LEFT JOIN generation_matching m USING (generation_id)
)
SELECT prompt_set,
       model_id,
       mitigation,
       mitigation_params,
       count(*) FILTER (WHERE matched) AS n,
       count(*) FILTER (WHERE matched AND label = 'VM') AS vm,
       count(*) FILTER (WHERE matched AND label = 'BM') AS bm,
       count(*) FILTER (WHERE matched AND label = 'FM') AS fm,
       count(*) FILTER (WHERE matched AND label = 'NM') AS nm,
       round(count(*) FILTER (WHERE matched AND label = 'VM') / nullif(count(*) FILTER (WHERE matched), 0), 4) AS vm_share,
       round(count(*) FILTER (WHERE matched AND label = 'BM') / nullif(count(*) FILTER (WHERE matched), 0), 4) AS bm_share,
       round(count(*) FILTER (WHERE matched AND label = 'FM') / nullif(count(*) FILTER (WHERE matched), 0), 4) AS fm_share,
       round(count(*) FILTER (WHERE matched AND label = 'NM') / nullif(count(*) FILTER (WHERE matched), 0), 4) AS nm_share,
       count(*) AS n_generated,
       any_value(tau) AS tau,
       any_value(scoring_id) AS scoring_id
  FROM l
 GROUP BY ALL
 ORDER BY prompt_set NULLS LAST, model_id NULLS LAST, mitigation NULLS LAST, mitigation_params NULLS FIRST;
