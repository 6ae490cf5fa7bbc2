-- The paper's one-to-many Gaussian fit (fbmem_data/fbmem/one_to_many.py writes one_to_many_fits; the
-- least-squares fit itself needs scipy, so it is stored, not computed here).

-- The newest fit per model, mitigation, prompt set and tau, with its fitted parameters.
CREATE OR REPLACE VIEW one_to_many_fit AS
SELECT fit_id, model_id, mitigation, prompt_set, tau, scoring_id, status, error,
       amplitude, mean, sigma, amplitude_se, mean_se, sigma_se, r2, moment_mean, moment_std,
       n_max, n_prompts, n_generations, n_memorized, created_at, run_id
  FROM one_to_many_fits
QUALIFY row_number() OVER (PARTITION BY model_id, mitigation, prompt_set, tau
                           ORDER BY created_at DESC, fit_id DESC) = 1;

-- Every stored fit bin by bin: the memorized generations the fit saw and the fitted curve there
-- (the paper's stacked-bar figure with its green line).
CREATE OR REPLACE VIEW one_to_many_fit_curve AS
SELECT f.fit_id, f.model_id, f.mitigation, f.prompt_set, f.tau,
       b.n_distinct_best::INTEGER AS n_distinct_best,
       f.counts[b.n_distinct_best] AS memorized,
       CASE WHEN f.status = 'ok'
            THEN f.amplitude * exp(-power(b.n_distinct_best - f.mean, 2) / (2 * power(f.sigma, 2))) END AS fitted
  FROM one_to_many_fits f,
       range(1, f.n_max + 1) AS b(n_distinct_best);

-- The same distribution by moments, straight from the labels (no fit, no stored table): count-weighted
-- mean and standard deviation of n_distinct_best over the memorized (VM + BM + FM) generations.
CREATE OR REPLACE VIEW one_to_many_moments AS
SELECT model_id, mitigation,
       sum(vm + bm + fm) AS n_memorized,
       sum(n_distinct_best * (vm + bm + fm)) / nullif(sum(vm + bm + fm), 0) AS moment_mean,
       sqrt(greatest(sum(n_distinct_best * n_distinct_best * (vm + bm + fm)) / nullif(sum(vm + bm + fm), 0)
            - power(sum(n_distinct_best * (vm + bm + fm)) / nullif(sum(vm + bm + fm), 0), 2), 0)) AS moment_std
  FROM one_to_many
 GROUP BY model_id, mitigation
 ORDER BY model_id, mitigation;
