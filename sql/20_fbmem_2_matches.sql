-- Per generated image, its training images ranked by pair score (ties broken by train_image_id).
CREATE OR REPLACE VIEW fbmem_ranked_matches AS
SELECT s.*,
       row_number() OVER (PARTITION BY s.generated_image_id
                          ORDER BY s.pair_score DESC, s.train_image_id) AS match_rank
  FROM fbmem_scores s;

-- best_match: the single best training image of every generated image (the paper's method): the row that
-- is match_rank 1 above (pair_score descending, NaN first and NULL last as DuckDB sorts them, ties by
-- train_image_id), found with one hash aggregate (arg_min over that order as a struct key) instead of
-- the window's sort of every pair: about 6x faster over 10 M rows (benchmarks/bench_sql.py).
CREATE OR REPLACE VIEW best_match AS
SELECT generated_image_id, unnest(best)
  FROM (SELECT generated_image_id,
               arg_min({'train_image_id': train_image_id, 'fg_score': fg_score, 'bg_score': bg_score,
                        'pair_score': pair_score, 'degenerate_rule': degenerate_rule, 'scoring_id': scoring_id,
                        'metric': metric, 'preset': preset, 'size': size, 'segmenter': segmenter},
                       {'not_nan': NOT isnan(pair_score), 'neg_score': -pair_score,
                        'train_image_id': train_image_id}) AS best
          FROM fbmem_scores
         GROUP BY generated_image_id);

-- top_k_matches: the k best (k from the variable k, default 5 as the reference keeps).
CREATE OR REPLACE VIEW top_k_matches AS
SELECT generated_image_id, match_rank, train_image_id, fg_score, bg_score, pair_score, degenerate_rule, scoring_id
  FROM fbmem_ranked_matches
 WHERE match_rank <= coalesce(CAST(getvariable('k') AS INTEGER), 5);
