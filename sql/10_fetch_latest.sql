-- The latest fetch attempt per (url, prompt_id), with whether it is final (not tried again by a
-- plain `fbmem fetch` re-run: ok, or a failure that retrying will not fix).
CREATE OR REPLACE VIEW fetch_latest AS
SELECT *, (status = 'ok' OR NOT retryable) AS final
FROM fetches
QUALIFY row_number() OVER (PARTITION BY url, prompt_id ORDER BY fetched_at DESC, run_id DESC) = 1;
