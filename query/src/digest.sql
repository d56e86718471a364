-- The digest of ${input} (rows in `flows` schema): its records grouped by
-- every column the dashboard's queries and the rules group, join or filter
-- on, with what they read of the rest kept as a minimum, maximum or sum.
-- Digests of several inputs read together answer those queries as the
-- inputs' records would (see digest.rs for why each column is as it is).
SELECT vendor, model, os_version, device_pseudonym, agent_id, boot_pseudonym, consent, source,
       domain, transport, dst_ip, dst_port,
       min(window_start) AS window_start, max(window_start) AS window_last,
       min(seconds_since_boot) AS seconds_since_boot,
       sum(CAST(bytes_out AS DECIMAL(38, 0))) AS bytes_out,
       sum(CAST(bytes_in AS DECIMAL(38, 0))) AS bytes_in,
       sum(connections) AS connections,
       max(interval_mean_s) AS interval_mean_s,
       CASE WHEN timed THEN max(interval_cv) END AS interval_cv,
       count(*) AS records
FROM (SELECT *, interval_mean_s > 0 AND interval_cv IS NOT NULL AND connections IS NOT NULL AS timed
      FROM ${input})
GROUP BY vendor, model, os_version, device_pseudonym, agent_id, boot_pseudonym, consent, source,
         domain, transport, dst_ip, dst_port, date_trunc('day', window_start),
         bytes_out IS NULL, bytes_in IS NULL, timed
