-- Histograms of the best-match scores (the paper's memorized vs non-memorized figure for the whole-image
-- baseline and for FB-Mem): 100 bins of width 0.01 on [0, 1] (a score of exactly 1 goes in the last bin),
-- per prompt set, model and mitigation, for the pair, foreground and background score. One scoring
-- configuration (variable scoring_id, else the latest), as fbmem_labels.
CREATE OR REPLACE VIEW best_match_score_histogram AS
WITH scores AS (
    SELECT l.prompt_set, l.model_id, l.mitigation, l.scoring_id, s.score, s.value
      FROM fbmem_labels l,
           unnest([{'score': 'pair', 'value': l.pair_score}, {'score': 'fg', 'value': l.fg_score},
                   {'score': 'bg', 'value': l.bg_score}]) AS u(s)
     WHERE s.value IS NOT NULL AND NOT isnan(s.value)
)
SELECT prompt_set, model_id, mitigation, scoring_id, score,
       least(greatest(floor(value * 100), 0), 99)::INTEGER / 100.0 AS bin_lo,
       count(*) AS n
  FROM scores
 GROUP BY ALL
 ORDER BY prompt_set NULLS LAST, model_id NULLS LAST, mitigation NULLS LAST, score, bin_lo;
