-- Per generated image, its training images ranked by pair score (ties broken by train_image_id).
CREATE OR REPLACE VIEW fbmem_ranked_matches AS
SELECT s.*,
       row_number() OVER (PARTITION BY s.generated_image_id
                          ORDER BY s.pair_score DESC, s.train_image_id) AS match_rank
  FROM fbmem_scores s;

-- best_match: the single best training image of every generated image (method.md §1.4).
CREATE OR REPLACE VIEW best_match AS
SELECT generated_image_id, train_image_id, fg_score, bg_score, pair_score, degenerate_rule,
       scoring_id, metric, preset, size, segmenter
  FROM fbmem_ranked_matches
 WHERE match_rank = 1;

-- top_k_matches: the k best (k from the variable k, default 5 as the reference keeps).
CREATE OR REPLACE VIEW top_k_matches AS
SELECT generated_image_id, match_rank, train_image_id, fg_score, bg_score, pair_score, degenerate_rule, scoring_id
  FROM fbmem_ranked_matches
 WHERE match_rank <= coalesce(TRY_CAST(getvariable('k') AS INTEGER), 5);
